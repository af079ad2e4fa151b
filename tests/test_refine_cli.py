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
    monkeypatch.setattr(refine, "run_global", lambda p: seen.append((p.prior_angle, p.prior_shift)))
    for extra in ([], ["--no-prior"], ["--ring-weight", "uniform"], ["--prior-angle", "5"]):
        assert run_refine(capsys, "--particles", sim_small["perturbed_star"], "--out", tmp_path / "o", *extra)[0] == 0
    assert seen == [(3.0, 1.0), (None, None), (None, None), (5.0, 1.0)]
