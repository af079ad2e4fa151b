"""``gmmcore refine`` never loses work and never gets stuck.

* A kill right after each kind of progress artefact is written (and before its partner), then the
  same command again: the run completes with exactly the result of an uninterrupted run.
* Temporaries of a write in flight are removed on resume; a full disk ends in one line and the
  run continues afterwards; a run refused mid-way by bad input leaves nothing behind.
* A run is identified by its input's content: the same path with changed particles is refused.

Data: the 160-particle, box-32 set of tests/data/run_v0.1.0 (one iteration ≈ 5 s on 2 cores).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from gmmcore.cli import main
from tests import helpers

DATA = Path(__file__).parent / "data" / "run_v0.1.0" / "sim"
ARGS = ["--iter", "1", "--maxres", "12", "--steps", "3", "--chunk", "40", "--cpu"]


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the engine catches it."""


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("GMMCORE_NO_PROGRESS", "1")
    monkeypatch.setattr(sys, "argv", list(sys.argv))


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robust_data")
    for f in ("particles.mrcs", "particles_perturbed.star"):
        shutil.copy(DATA / f, folder / f)
    return folder / "particles_perturbed.star"


def _refine(star, out, *extra):
    return main(["refine", "--particles", str(star), "--out", str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def reference(star, tmp_path_factory):
    out = tmp_path_factory.mktemp("robust_ref") / "run"
    assert _refine(star, out) == 0
    return out


def _same_result(run: Path, ref: Path):
    for f in ("iter001/poses.npz", "final/pose_changes.npz"):
        with np.load(run / f) as a, np.load(ref / f) as b:
            for k in a.files:
                assert np.array_equal(a[k], b[k]), (f, k)
    for f in ("iter001/half1.mrc", "iter001/half2.mrc", "final/map.mrc", "iter001/gmm_half2.gmm.npz"):
        import mrcfile

        if f.endswith(".mrc"):
            with mrcfile.open(run / f) as a, mrcfile.open(ref / f) as b:
                assert np.array_equal(a.data, b.data), f
        else:
            with np.load(run / f) as a, np.load(ref / f) as b:
                assert all(np.array_equal(a[k], b[k]) for k in ("centers", "amplitudes", "sigmas")), f
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (run, ref))
    assert sa["final"] == sb["final"]
    assert [r["fsc"] for r in sa["iterations"]] == [r["fsc"] for r in sb["iterations"]]
    assert not list(run.rglob(".*.part*"))


# every kind of file that marks a step done, with the partner written after it
KILL_AFTER = ["iter000/half2.mrc", "mask_auto.mrc", "iter000/report.json", "iter001/gmm_half1.gmm.npz",
              "iter001/gmm_half1.json", "iter001/gmm_half2.gmm.npz", "iter001/align_half1_ring_weights.npz",
              "iter001/align_half2_chunk0001.npz", "iter001/poses.npz", "iter001/half1.mrc",
              "iter001/report.json", "summary.json", "final/particles.star", "final/gmm_half2.gmm.npz",
              "final/pose_changes.npz"]


@pytest.mark.parametrize("artefact", KILL_AFTER)
def test_kill_after_each_artefact_then_rerun(star, reference, tmp_path, monkeypatch, artefact):
    out = tmp_path / "run"
    real_replace = os.replace
    killed = []

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if not killed and Path(dst) == out / artefact:
            killed.append(dst)
            raise _Killed(dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(_Killed):
        _refine(star, out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert killed and (out / artefact).exists()
    assert _refine(star, out) == 0
    _same_result(out, reference)


def test_stray_temporaries_removed_and_full_disk_resumable(star, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    # a disk that fills up while iteration 1's poses are written: one line, exit 2, no traceback
    real_replace = os.replace

    def full_disk(src, dst):
        if Path(dst).name == "poses.npz":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    rc = _refine(star, out)
    monkeypatch.setattr(os, "replace", real_replace)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "No space left on device" in err and "Traceback" not in err, err
    # a write in flight when the machine died leaves a temporary; the next run removes it
    stray = out / "iter001" / ".poses.npz.x1y2z3w4.part.npz"  # as safewrite.atomic_path names them
    stray.write_bytes(b"half-written")
    assert _refine(star, out) == 0
    assert not stray.exists()
    _same_result(out, reference)


def test_changed_particles_at_the_same_path_refused(star, reference, tmp_path, capsys):
    from gmmcore.io.star import read_star, write_star

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    moved = tmp_path / "data"
    shutil.copytree(star.parent, moved)
    params = json.loads((out / "params.json").read_text())
    params["particles"] = str((moved / star.name).resolve())
    (out / "params.json").write_text(json.dumps(params))
    table = read_star(moved / star.name)
    table.half = np.where(table.half == 1, 2, 1).astype(np.int8)  # halves swapped, same file name
    write_star(table, moved / star.name)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rc = _refine(moved / star.name, out)
    err = capsys.readouterr().err.strip()
    helpers.assert_one_error(rc, err, str(out), "content changed", verb="refine")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_bad_input_found_mid_run_leaves_nothing(star, tmp_path, capsys):
    import mrcfile

    folder = tmp_path / "data"
    shutil.copytree(star.parent, folder)
    with mrcfile.open(folder / "particles.mrcs", mode="r+") as m:
        m.data[77] = np.nan  # found only when the images are read, after the run directory exists
    out = tmp_path / "run"
    rc = _refine(folder / star.name, out)
    err = capsys.readouterr().err.strip()
    helpers.assert_one_error(rc, err, "NaN", verb="refine")
    assert not out.exists()
