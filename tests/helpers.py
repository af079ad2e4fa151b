"""Helpers shared by the engine tests: synthetic particle files built independently of gmmcore's
writers (RELION 3.0/3.1/5 star text, cryoSPARC .cs records, random stacks), and the one-line-error
checks of the command line.  Test modules import from here, never from each other.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from gmmcore.geometry import euler_to_matrix

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


def cs_records(P, long_rotvec=False, psize=True, split=True, extra=True):
    """A .cs structured array for the particles of ``P``, built independently of gmmcore:
    pose = rotation vector of Aᵀ (cryoSPARC's R = Aᵀ), shift = origin in pixels."""
    n = P["n"]
    A = euler_to_matrix(P["rot"], P["tilt"], P["psi"])
    rv = Rotation.from_matrix(np.swapaxes(A, 1, 2)).as_rotvec()
    if long_rotvec:  # the same rotation, as a vector longer than π: (θ − 2π) · axis with |θ − 2π| > π
        theta = np.linalg.norm(rv, axis=1, keepdims=True)
        rv = rv / theta * (theta - 2 * np.pi)
    dt = [("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,))]
    dt += [("blob/psize_A", "<f4")] if psize else []
    dt += [("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
           ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
           ("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,)), ("alignments3D/psize_A", "<f4")]
    dt += [("alignments3D/split", "<u4")] if split else []
    dt += [("alignments3D/error", "<f4"), ("location/micrograph_path", "S20")] if extra else []
    r = np.zeros(n, dtype=dt)
    r["uid"] = np.arange(n, dtype=np.uint64) * 7919 + 12345
    r["blob/path"] = [f">J12/extract/stack{s}.mrcs".encode() for s in P["stack"]]
    r["blob/idx"] = P["index"] - 1
    r["blob/shape"] = P["box"]
    if psize:
        r["blob/psize_A"] = P["apix"]
    r["ctf/accel_kv"], r["ctf/cs_mm"], r["ctf/amp_contrast"] = P["voltage"], P["cs"], P["q0"]
    r["ctf/df1_A"], r["ctf/df2_A"] = P["du"], P["dv"]
    r["ctf/df_angle_rad"] = np.radians(P["dang"])
    r["alignments3D/pose"] = rv
    r["alignments3D/shift"] = P["origin_A"] / P["apix"]
    r["alignments3D/psize_A"] = P["apix"]
    if split:
        r["alignments3D/split"] = P["half"] - 1
    if extra:
        r["alignments3D/error"] = np.arange(n) * 0.5
        r["location/micrograph_path"] = [f"mic{i}.mrc".encode() for i in range(n)]
    return r


def save_cs(path, rec):
    with open(path, "wb") as f:  # keep the .cs name (np.save on a name would append .npy)
        np.save(f, rec)
    return path


# ----------------------------------------------------------------------------------------------
# the command line, in process
# ----------------------------------------------------------------------------------------------
def run_verb(capsys, verb, *args):
    """``gmmcore <verb> args`` in this process → (exit code, stderr stripped, stdout)."""
    from gmmcore.cli import main

    rc = main([verb] + [str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.err.strip(), cap.out


def assert_one_error(rc, err, *must_contain, verb=None):
    """A user mistake: exit code 2, exactly one stderr line ``gmmcore <verb>: error: ...`` naming
    everything in ``must_contain``, no traceback.  Returns the line."""
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    prefix = f"gmmcore {verb}: error: " if verb else "gmmcore "
    assert lines[0].startswith(prefix) and ": error: " in lines[0], lines[0]
    assert "Traceback" not in err
    for s in must_contain:
        assert str(s) in lines[0], (s, lines[0])
    return lines[0]


def sim_small_start(sim_small, folder):
    """Iteration 0 of the ``sim_small`` fixture's perturbed particles in ``folder``/start, and the
    alignment settings of a short test run (3 steps, chunks of 100, at most 12 Å) → (table, begin, align)."""
    from gmmcore.io.star import read_star
    from gmmcore.refine.global_refine import RefineParams
    from gmmcore.refine.rundir import RunDir
    from gmmcore.refine.start import iteration0

    table = read_star(sim_small["perturbed_star"])
    run = RunDir.create_or_continue(folder / "start", {"particles": "sim_small"}, ("particles",))
    begin = iteration0(table, run, "C1", 2, 100)
    align = RefineParams(particles="", out="", steps=3, chunk=100, maxres=12.0).align_settings()
    return table, begin, align


def realistic_global(root, spec: dict, iterations: int, threads=("--threads", "2")) -> tuple:
    """(set folder, global run folder) under ``root``: a small realistic set (``spec``: the keyword
    arguments of benchmarks.realistic.generate.generate) generated, imported and refined
    ``iterations`` times; steps already finished are skipped (benchmarks/seed_spread.py reuses them)."""
    from pathlib import Path

    from benchmarks.realistic.generate import generate
    from gmmcore.cli import main

    root = Path(root)
    set_dir, imp, glob = root / "set", root / "imp", root / "glob"
    generate(set_dir, **spec)
    if not (imp / "particles.star").is_file():
        assert main(["import", "--star", str(set_dir / "particles.star"), "--out", str(imp)]) == 0
    if not (glob / "final" / "particles.star").is_file():
        assert main(["refine", "--particles", str(imp / "particles.star"), "--out", str(glob),
                     "--iter", str(iterations), *threads]) == 0
    return set_dir, glob
