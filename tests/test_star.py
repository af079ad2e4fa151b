"""RELION star reading/writing: 3.0 / 3.1 / 5, block order, optics joins, round trips, Euler conventions.

The star files here are written as text by the test itself (not by gmmcore), so reading is checked
against an independent writer.  Helpers are shared with the other I/O tests.
"""
from __future__ import annotations

import numpy as np
import pytest

from gmmcore.geometry import euler_to_matrix, matrix_to_euler
from gmmcore.io.star import read_star, read_star_blocks, write_star

# ----------------------------------------------------------------------------------------------
# helpers (used by test_cryosparc, test_import_export, test_bad_input too)
# ----------------------------------------------------------------------------------------------


def random_particles(n=12, seed=0, box=16, apix=1.5, n_stack=1):
    """Random poses/shifts/CTF: everything a star or .cs needs, in plain arrays."""
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    return {
        "n": n, "box": box, "apix": apix,
        "rot": rot, "tilt": tilt, "psi": psi,
        "origin_A": rng.uniform(-4, 4, (n, 2)),
        "du": rng.uniform(8000, 30000, n), "dv": rng.uniform(8000, 30000, n),
        "dang": rng.uniform(-180, 180, n),
        "voltage": 300.0, "cs": 2.7, "q0": 0.07,
        "half": rng.integers(1, 3, n),
        "extra": rng.normal(size=n) * 1e3,
        # images spread over n_stack stacks, 1-based index within its stack
        "stack": np.arange(n) % n_stack,
        "index": np.arange(n) // n_stack + 1,
    }


def write_stacks(folder, P, seed=1, names=None):
    """Write the particles' images (random, float32) into stacks; returns the images (n, box, box)."""
    import mrcfile

    rng = np.random.default_rng(seed)
    imgs = rng.normal(size=(P["n"], P["box"], P["box"])).astype(np.float32)
    for s in np.unique(P["stack"]):
        rows = np.flatnonzero(P["stack"] == s)
        order = rows[np.argsort(P["index"][rows])]
        name = (names or {}).get(s, f"stack{s}.mrcs")
        with mrcfile.new(str(folder / name), overwrite=True) as m:
            m.set_data(imgs[order])
            m.set_image_stack()
            m.voxel_size = P["apix"]
    return imgs


def _img(P, i, prefix=""):
    return f"{P['index'][i]:06d}@{prefix}stack{P['stack'][i]}.mrcs"


def star31_text(P, optics_first=True, version="30001", prefix="", groups=None, half=True, extra=True,
                drop=()):
    """RELION 3.1 (or 5 with version 50001) text. ``groups``: list of (number, name, apix) per group;
    particle i goes to group groups[i % len(groups)]."""
    groups = groups or [(1, "opticsGroup1", P["apix"])]
    opt = ["", "data_optics", "", "loop_", "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2",
           "_rlnMicrographOriginalPixelSize #3", "_rlnVoltage #4", "_rlnSphericalAberration #5",
           "_rlnAmplitudeContrast #6", "_rlnImagePixelSize #7", "_rlnImageSize #8", "_rlnImageDimensionality #9"]
    for num, name, apix in groups:
        opt.append(f"{name}\t{num}\t0.5\t{P['voltage']}\t{P['cs']}\t{P['q0']}\t{apix}\t{P['box']}\t2")
    labels = ["rlnImageName", "rlnMicrographName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
              "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
              "rlnOpticsGroup"] + (["rlnRandomSubset"] if half else []) + (["rlnMyExtraColumn"] if extra else [])
    labels = [lab for lab in labels if lab not in drop]
    par = ["", "data_particles", "", "loop_"] + [f"_{lab} #{k + 1}" for k, lab in enumerate(labels)]
    for i in range(P["n"]):
        g = groups[i % len(groups)][0]
        vals = {"rlnImageName": _img(P, i, prefix), "rlnMicrographName": f"{i:05d}",
                "rlnAngleRot": P["rot"][i], "rlnAngleTilt": P["tilt"][i], "rlnAnglePsi": P["psi"][i],
                "rlnOriginXAngst": P["origin_A"][i, 0], "rlnOriginYAngst": P["origin_A"][i, 1],
                "rlnDefocusU": P["du"][i], "rlnDefocusV": P["dv"][i], "rlnDefocusAngle": P["dang"][i],
                "rlnOpticsGroup": g, "rlnRandomSubset": P["half"][i], "rlnMyExtraColumn": P["extra"][i]}
        par.append("\t".join(f"{vals[lab]:.9f}" if isinstance(vals[lab], float) else str(vals[lab])
                             for lab in labels))
    head = ["", f"# version {version}"]
    blocks = opt + [""] + head + par if optics_first else par + [""] + head + opt
    return "\n".join(head + blocks) + "\n"


def star30_text(P, pixel="detector", prefix=""):
    """RELION 3.0 text: one block, origins in pixels, optics in particle columns."""
    labels = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY",
              "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
              "rlnAmplitudeContrast", "rlnRandomSubset"]
    labels += ["rlnDetectorPixelSize", "rlnMagnification"] if pixel == "detector" else ["rlnImagePixelSize"]
    lines = ["", "data_", "", "loop_"] + [f"_{lab} #{k + 1}" for k, lab in enumerate(labels)]
    mag = 10000.0
    for i in range(P["n"]):
        v = [_img(P, i, prefix), P["rot"][i], P["tilt"][i], P["psi"][i],
             P["origin_A"][i, 0] / P["apix"], P["origin_A"][i, 1] / P["apix"], P["du"][i], P["dv"][i],
             P["dang"][i], P["voltage"], P["cs"], P["q0"], P["half"][i]]
        v += [P["apix"] * mag / 1e4, mag] if pixel == "detector" else [P["apix"]]
        lines.append("\t".join(f"{x:.9f}" if isinstance(x, float) else str(x) for x in v))
    return "\n".join(lines) + "\n"


def assert_same_rotations(A, B, tol=1e-6):
    assert A.shape == B.shape
    assert np.max(np.abs(A - B)) < tol


# ----------------------------------------------------------------------------------------------
# Euler conventions
# ----------------------------------------------------------------------------------------------
def _rz(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])


def _ry(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


def test_euler_to_matrix_matches_elementary_product():
    # RELION's Euler_angles2matrix is A = Rz(psi) Ry(tilt) Rz(rot) with the (passive) elementary
    # rotations written out above; e.g. rot = 90 maps x to -y.
    rng = np.random.default_rng(3)
    for rot, tilt, psi in rng.uniform(-180, 180, (50, 3)):
        expected = _rz(psi) @ _ry(tilt) @ _rz(rot)
        np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi), expected, atol=1e-12)
    np.testing.assert_allclose(euler_to_matrix(90, 0, 0) @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(euler_to_matrix(0, 90, 0) @ [0, 0, 1], [-1, 0, 0], atol=1e-12)


@pytest.mark.parametrize("tilt", [0.0, 180.0, 1e-9, 37.0, 179.999])
def test_matrix_to_euler_round_trip(tilt):
    rng = np.random.default_rng(4)
    rot, psi = rng.uniform(-180, 180, (2, 20))
    A = euler_to_matrix(rot, np.full(20, tilt), psi)
    e = matrix_to_euler(A)
    np.testing.assert_allclose(euler_to_matrix(e[:, 0], e[:, 1], e[:, 2]), A, atol=1e-9)
    assert np.all((e[:, 1] >= 0) & (e[:, 1] <= 180))
    if 0.1 < tilt < 179.9:  # regular case: the same triplet comes back (mod 360)
        np.testing.assert_allclose(e[:, 1], tilt, atol=1e-7)
        np.testing.assert_allclose((e[:, 0] - rot + 180) % 360 - 180, 0, atol=1e-7)
        np.testing.assert_allclose((e[:, 2] - psi + 180) % 360 - 180, 0, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def _check_table(t, P, apix=None):
    A = euler_to_matrix(P["rot"], P["tilt"], P["psi"])
    assert_same_rotations(t.rotation, A)
    np.testing.assert_allclose(t.origin, P["origin_A"], atol=1e-6)
    np.testing.assert_allclose(t.ctf.defocus_u, P["du"], atol=1e-6)
    np.testing.assert_allclose(t.ctf.defocus_v, P["dv"], atol=1e-6)
    np.testing.assert_allclose(t.ctf.defocus_angle, P["dang"], atol=1e-6)
    np.testing.assert_allclose(t.ctf.voltage, 300.0)
    np.testing.assert_allclose(t.ctf.cs, 2.7)
    np.testing.assert_allclose(t.ctf.amp_contrast, 0.07)
    np.testing.assert_array_equal(t.half, P["half"])
    np.testing.assert_allclose(t.apix, P["apix"] if apix is None else apix, rtol=1e-9)
    np.testing.assert_array_equal(t.image_size, P["box"])


@pytest.mark.parametrize("optics_first", [True, False])
def test_read_relion31_either_block_order(tmp_path, optics_first):
    P = random_particles()
    f = tmp_path / "p.star"
    f.write_text(star31_text(P, optics_first=optics_first))
    t = read_star(f)
    _check_table(t, P)
    assert t.meta["format"] == "relion3.1"
    assert t.phase_flipped is False
    assert t.image_root == str(tmp_path.resolve())
    assert list(t.image_name[:2]) == ["000001@stack0.mrcs", "000002@stack0.mrcs"]
    # string columns that look like numbers are not mangled by the parser
    assert t.star_particles["rlnMicrographName"].tolist()[:3] == ["00000", "00001", "00002"]
    np.testing.assert_allclose(t.star_particles["rlnMyExtraColumn"], P["extra"], atol=1e-6)


def test_read_relion5_version_header(tmp_path):
    P = random_particles(seed=5)
    f = tmp_path / "p.star"
    f.write_text(star31_text(P, version="50001", optics_first=False))
    t = read_star(f)
    _check_table(t, P)
    assert t.meta["format"] == "relion5" and t.meta["version"] == 50001


def test_two_optics_groups_joined_by_number_not_name(tmp_path):
    P = random_particles(n=10, seed=6)
    # numbers deliberately disagree with names, and are listed out of order
    groups = [(2, "opticsGroup1", 1.0), (1, "opticsGroup2", 2.0)]
    f = tmp_path / "p.star"
    f.write_text(star31_text(P, groups=groups))
    t = read_star(f)
    expect_group = np.array([groups[i % 2][0] for i in range(10)])
    expect_apix = np.array([groups[i % 2][2] for i in range(10)])
    np.testing.assert_array_equal(t.optics_group, expect_group)
    np.testing.assert_allclose(t.apix, expect_apix)
    # written back: groups keep numbers, names and pixel sizes
    out = tmp_path / "w.star"
    write_star(t, out)
    blocks, _ = read_star_blocks(out)
    o = blocks["optics"].set_index("rlnOpticsGroup")
    assert o.loc[2, "rlnOpticsGroupName"] == "opticsGroup1" and o.loc[2, "rlnImagePixelSize"] == 1.0
    assert o.loc[1, "rlnOpticsGroupName"] == "opticsGroup2" and o.loc[1, "rlnImagePixelSize"] == 2.0
    t2 = read_star(out)
    np.testing.assert_allclose(t2.apix, expect_apix)
    np.testing.assert_allclose(t2.origin, P["origin_A"], atol=1e-6)


@pytest.mark.parametrize("pixel", ["detector", "image"])
def test_relion30_matches_relion31(tmp_path, pixel):
    P = random_particles(seed=7, apix=1.234)
    write_stacks(tmp_path, P)  # 3.0 has no image size in the star: it comes from the stack header
    f30, f31 = tmp_path / "p30.star", tmp_path / "p31.star"
    f30.write_text(star30_text(P, pixel=pixel))
    f31.write_text(star31_text(P))
    t30, t31 = read_star(f30), read_star(f31)
    assert t30.meta["format"] == "relion3.0"
    _check_table(t30, P)
    np.testing.assert_allclose(t30.origin, t31.origin, atol=1e-6)
    np.testing.assert_allclose(t30.apix, t31.apix, rtol=1e-9)
    assert_same_rotations(t30.rotation, t31.rotation)
    # written as 3.1: pixel origins gone, Å origins in, optics values moved into data_optics
    out = tmp_path / "w.star"
    write_star(t30, out)
    blocks, _ = read_star_blocks(out)
    p = blocks["particles"]
    assert "rlnOriginX" not in p.columns and "rlnVoltage" not in p.columns
    np.testing.assert_allclose(p["rlnOriginXAngst"], P["origin_A"][:, 0], atol=1e-6)
    o = blocks["optics"]
    assert o["rlnImagePixelSize"].tolist() == pytest.approx([1.234])
    assert o["rlnImageSize"].tolist() == [P["box"]]
    _check_table(read_star(out), P)


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def test_star_round_trip_keeps_everything(tmp_path):
    P = random_particles(n=15, seed=8)
    f = tmp_path / "in.star"
    f.write_text(star31_text(P, optics_first=False, version="50001"))
    t = read_star(f)
    out = tmp_path / "out.star"
    write_star(t, out)
    text = out.read_text()
    assert "# version 30001" in text
    assert text.index("data_optics") < text.index("data_particles")
    t2 = read_star(out)
    _check_table(t2, P)
    assert list(t2.image_name) == list(t.image_name)
    b_in, _ = read_star_blocks(f)
    b_out, _ = read_star_blocks(out)
    for block in ("particles", "optics"):
        a, b = b_in[block], b_out[block]
        assert set(a.columns) <= set(b.columns), set(a.columns) - set(b.columns)
        for c in a.columns:
            if a[c].dtype.kind in "fi":
                # angles may come back as an equivalent triplet; they are compared as matrices above
                if c.startswith("rlnAngle"):
                    continue
                np.testing.assert_allclose(b[c].to_numpy(float), a[c].to_numpy(float), atol=1e-6, err_msg=c)
            else:
                assert b[c].astype(str).tolist() == a[c].astype(str).tolist(), c
    o = b_out["optics"]
    for c in ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
              "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnCtfDataArePhaseFlipped"):
        assert c in o.columns
    assert o["rlnCtfDataArePhaseFlipped"].tolist() == [0]
    # second round trip is a fixed point of the text
    out2 = tmp_path / "out2.star"
    write_star(t2, out2)
    assert out2.read_text() == text


def test_written_poses_after_change(tmp_path):
    P = random_particles(n=9, seed=9)
    f = tmp_path / "in.star"
    f.write_text(star31_text(P))
    t = read_star(f)
    rng = np.random.default_rng(0)
    from gmmcore.geometry import random_rotations
    R = random_rotations(9, rng)
    R[0] = euler_to_matrix(10, 0, 20)  # degenerate tilt 0
    R[1] = euler_to_matrix(10, 180, 20)  # degenerate tilt 180
    o = rng.uniform(-9, 9, (9, 2))
    t2 = t.with_poses(R, o)
    t2.half = np.array([2, 1, 2, 1, 2, 1, 2, 1, 2], np.int8)
    t2.phase_flipped = True
    out = tmp_path / "out.star"
    write_star(t2, out)
    t3 = read_star(out)
    assert_same_rotations(t3.rotation, R)
    np.testing.assert_allclose(t3.origin, o, atol=1e-6)
    np.testing.assert_array_equal(t3.half, t2.half)
    assert t3.phase_flipped is True


def test_write_without_pass_through(tmp_path):
    P = random_particles(n=6, seed=10)
    f = tmp_path / "in.star"
    f.write_text(star31_text(P))
    t = read_star(f)
    t.star_particles = None
    t.star_optics = None
    out = tmp_path / "out.star"
    write_star(t, out)
    _check_table(read_star(out), P)
