"""``gmmcore refine`` bad input: exit code 2, one line on stderr naming the file / field, no traceback.

Uses the shared ``sim_small`` dataset (conftest).  The one run that gets through (``--new-split``)
is a single coarse iteration, a few seconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import helpers

REPO = Path(__file__).resolve().parents[1]


def run_refine(capsys, *args):
    return helpers.run_verb(capsys, "refine", "--cpu", *args)


def assert_one_error(rc, err, *must_contain):
    helpers.assert_one_error(rc, err, *must_contain, verb="refine")


@pytest.fixture
def no_split_star(sim_small, tmp_path):
    """sim_small's perturbed star without rlnRandomSubset (the stack linked beside it)."""
    from gmmcore.io.star import read_star, write_star

    (tmp_path / "particles.mrcs").symlink_to(sim_small["stack"])
    table = read_star(sim_small["perturbed_star"])
    table.half = np.zeros(len(table), np.int8)
    f = write_star(table, tmp_path / "nosplit.star")
    assert "rlnRandomSubset" not in Path(f).read_text()
    return Path(f)


def test_missing_particles(tmp_path, capsys):
    missing = tmp_path / "nothere.star"
    rc, err, _ = run_refine(capsys, "--particles", missing, "--out", tmp_path / "out")
    assert_one_error(rc, err, missing, "--particles", "file not found")


def test_missing_particles_subprocess(tmp_path):
    missing = tmp_path / "nothere.star"
    env = dict(os.environ, GMMCORE_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "gmmcore", "refine", "--particles", str(missing), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("gmmcore refine: error: ")
    assert str(missing) in lines[0] and "--particles" in lines[0]


def test_no_half_split_then_new_split(no_split_star, tmp_path, capsys):
    rc, err, _ = run_refine(capsys, "--particles", no_split_star, "--out", tmp_path / "out1", "--iter", "1")
    assert_one_error(rc, err, no_split_star, "rlnRandomSubset", "--new-split")
    assert not (tmp_path / "out1").exists()  # a refused run writes nothing

    out = tmp_path / "out1"  # the corrected command, same folder
    rc, err, stdout = run_refine(capsys, "--particles", no_split_star, "--out", out, "--iter", "1", "--new-split",
                                 "--maxres", "12", "--steps", "3")
    assert rc == 0, err
    assert "Traceback" not in err
    log = (out / "run.log").read_text()
    assert "new random split" in log and "new random split" in stdout
    from gmmcore.io.star import read_star

    final = read_star(out / "final" / "particles.star")
    n1, n2 = int(np.sum(final.half == 1)), int(np.sum(final.half == 2))
    assert n1 + n2 == 400 and abs(n1 - n2) <= 1  # every particle got a half, balanced


def test_bad_sym(sim_small, tmp_path, capsys):
    rc, err, _ = run_refine(capsys, "--particles", sim_small["perturbed_star"], "--out", tmp_path / "out",
                            "--sym", "X7")
    assert_one_error(rc, err, "--sym", "X7")


def test_mask_wrong_box(sim_small, tmp_path, capsys):
    from gmmcore.io.maps import write_map

    mask = tmp_path / "mask32.mrc"
    write_map(mask, np.ones((32, 32, 32), np.float32), sim_small["apix"])
    rc, err, _ = run_refine(capsys, "--particles", sim_small["perturbed_star"], "--out", tmp_path / "out",
                            "--mask", mask, "--iter", "1")
    assert_one_error(rc, err, mask, "(32, 32, 32)", "48")


@pytest.mark.parametrize("extra, field", [
    (["--prior-angle", "0"], "--prior-angle"),
    (["--prior-shift", "-1"], "--prior-shift"),
    (["--ring-weight", "uniform", "--prior-angle", "2"], "--prior-angle"),
    (["--no-prior", "--prior-shift", "1"], "--prior-angle"),
])
def test_bad_prior_flags(sim_small, tmp_path, capsys, extra, field):
    rc, err, _ = run_refine(capsys, "--particles", sim_small["perturbed_star"], "--out", tmp_path / "out", *extra)
    assert_one_error(rc, err, field)
    assert not (tmp_path / "out").exists()


def test_prior_settings_recorded(sim_small, tmp_path, capsys, monkeypatch):
    """Default: prior 3°/1 px; --no-prior and --ring-weight uniform switch it off (params.json)."""
    import gmmcore.refine.global_refine as refine

    seen = []
    monkeypatch.setattr(refine, "run_global", lambda p, **kw: seen.append((p.prior_angle, p.prior_shift)))
    for extra in ([], ["--no-prior"], ["--ring-weight", "uniform"], ["--prior-angle", "5"]):
        assert run_refine(capsys, "--particles", sim_small["perturbed_star"], "--out", tmp_path / "o", *extra)[0] == 0
    assert seen == [(3.0, 1.0), (None, None), (None, None), (5.0, 1.0)]



def test_star_read_once_as_run_global_reads_it(tmp_path, capsys, monkeypatch):
    """The command line parses the particles star once and hands run_global the table it would read
    itself: a RELION 3.0 star's image size from its stack's header, the star named by its absolute path."""
    import gmmcore.io.star as star
    import gmmcore.refine.global_refine as refine

    P = helpers.random_particles(n=40, box=16)
    helpers.write_stacks(tmp_path, P)
    (tmp_path / "p30.star").write_text(helpers.star30_text(P))
    real, reads, got = star.read_star, [], []
    monkeypatch.setattr(star, "read_star", lambda *a, **kw: reads.append(a[0]) or real(*a, **kw))
    monkeypatch.setattr(refine, "run_global", lambda p, executor=None, table=None: got.append((p, table)))
    monkeypatch.chdir(tmp_path)
    assert run_refine(capsys, "--particles", "p30.star", "--out", "o")[0] == 0
    assert len(reads) == 1
    (p, table), = got
    want = real(p.particles)
    assert p.particles == str(tmp_path.resolve() / "p30.star") and table.source == want.source == p.particles
    assert table.meta["format"] == "relion3.0" and set(table.image_size.tolist()) == {16}
    assert table.content_hash() == want.content_hash() and table.image_root == want.image_root

# ---- every input checked before anything is written ------------------------------------------


@pytest.mark.parametrize("extra, field", [
    (["--ngauss", "0"], "--ngauss"),
    (["--lr-angle", "nan"], "--lr-angle"),
    (["--lr-shift", "-0.5"], "--lr-shift"),
    (["--ref-lowpass", "0"], "--ref-lowpass"),
    (["--minres", "3"], "--minres"),          # finer than the finest possible target (2.1 Å at 2 Å/px... 4.2 Å)
    (["--maxres", "30"], "--maxres"),         # coarser than --minres 25
    (["--maxres", "-4"], "--maxres"),
    (["--threads", "0"], "--threads"),
    (["--iter", "-1"], "--iter"),
])
def test_bad_numbers_refused_before_writing(sim_small, tmp_path, capsys, extra, field):
    rc, err, _ = run_refine(capsys, "--particles", sim_small["perturbed_star"], "--out", tmp_path / "out", *extra)
    assert_one_error(rc, err, field)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, words", [
    ("zeros", "empty"), ("voxel", "encloses only 1 voxels"), ("map", "between 0 and 1"), ("apix", "pixel size"),
])
def test_bad_mask_refused_before_writing(sim_small, tmp_path, capsys, kind, words):
    from gmmcore.io.maps import write_map
    from gmmcore.masks import soft_sphere_mask

    box, apix = sim_small["box"], sim_small["apix"]
    m = {"zeros": np.zeros((box,) * 3, np.float32), "voxel": np.zeros((box,) * 3, np.float32),
         "map": 5.0 * soft_sphere_mask(box, 10), "apix": soft_sphere_mask(box, 10)}[kind]
    if kind == "voxel":
        m[box // 2, box // 2, box // 2] = 1.0
    f = write_map(tmp_path / f"{kind}.mrc", m, apix * (1.5 if kind == "apix" else 1.0))
    rc, err, _ = run_refine(capsys, "--particles", sim_small["perturbed_star"], "--out", tmp_path / "out", "--mask", f)
    assert_one_error(rc, err, f, "--mask", words)
    assert not (tmp_path / "out").exists()


def test_one_half_split_and_too_few_particles_refused(sim_small, tmp_path, capsys):
    from gmmcore.io.star import read_star, write_star

    (tmp_path / "particles.mrcs").symlink_to(sim_small["stack"])
    table = read_star(sim_small["perturbed_star"])
    table.half = np.ones(len(table), np.int8)  # every particle in half 1 (seen in a real RELION 3.1 file)
    one = write_star(table, tmp_path / "one_half.star")
    rc, err, _ = run_refine(capsys, "--particles", one, "--out", tmp_path / "o1")
    assert_one_error(rc, err, one, "half set 2", "--new-split")
    assert not (tmp_path / "o1").exists()

    few = write_star(read_star(sim_small["perturbed_star"]).subset(np.arange(40)), tmp_path / "few.star")
    rc, err, _ = run_refine(capsys, "--particles", few, "--out", tmp_path / "o2")
    assert_one_error(rc, err, few, "at least 76 per half", "--force")  # ceil(π·48/2) = 76
    assert not (tmp_path / "o2").exists()
    rc, err, _ = run_refine(capsys, "--particles", few, "--out", tmp_path / "o2", "--force", "--iter", "0")
    assert rc == 0, err


def test_iter0_gpu_request_threads_recorded(sim_small, tmp_path, capsys):
    """--iter 0: the input poses' maps and FSC; the summary lists only files that exist; a GPU asked
    for on an engine without one is a warning in the log and the summary; --threads is honoured."""
    import json

    out = tmp_path / "out"
    rc, err, stdout = helpers.run_verb(capsys, "refine", "--particles", sim_small["perturbed_star"], "--out", out,
                                       "--iter", "0", "--gpu", "0", "--threads", "1")  # no --cpu: a GPU asked for
    assert rc == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["iterations"] == [] and s["final"]["gmm"] == {} and s["final"]["gmm_pdb"] == {}
    for key in ("particles", "half1", "half2", "map", "pose_changes"):
        assert (out / s["final"][key]).is_file(), key
    log = (out / "run.log").read_text()
    assert "GPU 0 requested; the engine sees no GPU" in log
    assert any("GPU 0 requested" in w for w in s["warnings"])
    assert "CPU (1 threads)" in log and s["params"]["threads"] == 1


def test_progress_lines_in_logs(sim_small, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GMMCORE_NO_PROGRESS")
    monkeypatch.setenv("GMMCORE_PROGRESS", "lines")
    rc, err, stdout = run_refine(capsys, "--particles", sim_small["perturbed_star"], "--out", tmp_path / "o",
                                 "--iter", "1", "--maxres", "12", "--steps", "2")
    assert rc == 0, err
    lines = stdout.splitlines()
    for step in ("GMM fit", "alignment", "reconstruction"):
        mine = [ln for ln in lines if step in ln and "%" in ln]
        assert len(mine) >= 3, (step, lines[:20])  # regular lines, not only 0 % and 100 %
    assert any("ETA" in ln and "ptcl/s" in ln for ln in lines if "alignment" in ln)
