"""RELION star reading/writing: 3.0 / 3.1 / 5, block order, optics joins, round trips, Euler conventions.

The star files here are written as text by the test itself (not by gmmcore), so reading is checked
against an independent writer.  Helpers are shared with the other I/O tests.
"""
from __future__ import annotations

import numpy as np
import pytest

from gmmcore.geometry import euler_to_matrix, matrix_to_euler
from gmmcore.io.star import read_star, read_star_blocks, write_star
from tests.helpers import assert_same_rotations, random_particles, star30_text, star31_text, write_stacks

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


def test_optics_rows_looks_up_group_numbers_in_any_order():
    """Each particle's row of data_optics by group number (numbers distinct, listed in any order)."""
    from gmmcore.io.star import optics_rows

    numbers = np.array([7, 2, 5, 11])
    group = np.array([5, 5, 11, 2, 7, 2, 11, 7, 5])
    np.testing.assert_array_equal(optics_rows(numbers, group), [2, 2, 3, 1, 0, 1, 3, 0, 2])
    assert optics_rows(numbers, group[:0]).shape == (0,)


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
