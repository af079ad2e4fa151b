"""One rule for every verb's output (issue 19): ``--out`` that is or holds an input, lies inside an
input run, holds a run of another kind, or is locked by a running command is refused before
anything is written — exit code 2, one line, the inputs byte-identical, nothing new on disk.

The inputs are tiny and fake where the rule is checked before any real work (a "run" folder is
a params.json + summary.json naming its kind, a 12-particle star + stack of 16-pixel images and
two 16³ half maps), so the whole matrix runs in seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gmmcore.errors import InputError
from gmmcore.io.maps import write_map
from gmmcore.safewrite import LOCK_NAME, claim_output, folder_kind, release_claims
from tests.helpers import assert_one_error, random_particles, run_verb, star31_text, write_stacks


def tree(root: Path) -> dict:
    """Every file and folder below ``root`` → its content hash (None for a folder)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def fake_run(folder: Path, kind: str = "global") -> Path:
    """A finished run of ``kind`` as far as the output rule looks: params.json, summary.json,
    final/particles.star + its stack, two different half maps and a mask."""
    fin = folder / "final"
    fin.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"kind": kind}))
    (folder / "summary.json").write_text(json.dumps({"kind": kind}))
    P = random_particles(n=12, seed=3)
    P["half"] = np.arange(12) % 2 + 1
    write_stacks(fin, P, names={0: "particles.mrcs"})
    (fin / "particles.star").write_text(star31_text(P).replace("@stack0.mrcs", "@particles.mrcs"))
    rng = np.random.default_rng(0)
    for h in (1, 2):
        write_map(fin / f"half{h}.mrc", rng.normal(size=(16, 16, 16)), 1.5)
    write_map(folder / "mask.mrc", np.ones((16, 16, 16)), 1.5)
    return folder


# verb -> (arguments naming the inputs in run R, what --out "= an input" is, whether --out is a file)
def verb_cases(R: Path) -> dict:
    star, h1, h2, mask = R / "final/particles.star", R / "final/half1.mrc", R / "final/half2.mrc", R / "mask.mrc"
    return {
        "import": (["--star", star], R / "final", False),
        "reconstruct": (["--particles", star], R / "final", False),
        "refine": (["--cpu", "--particles", star], R / "final", False),
        "expand-symmetry": (["--particles", star, "--sym", "C2"], R / "final", False),
        "local-resolution": (["--half1", h1, "--half2", h2], R / "final", False),
        "refine-focused": (["--cpu", "--from", R, "--mask", mask], R, False),
        "refine-patches": (["--cpu", "--from", R, "--patches", "2"], R, False),
        "heterogeneity": (["--cpu", "--from", R], R, False),
        "conf2pose": (["--cpu", "--from", R, "--mask", mask], R, False),
        "export": (["--particles", star, "--format", "relion"], star, True),
        "build-gmm": (["--map", h1, "--resolution", "6", "--seed-model", R / "model.pdb"], R / "model", True),
        "simulate": (["--model", R / "model.pdb"], R, False),
    }


VERBS = list(verb_cases(Path(".")))
CASES = ["is-input", "inside-input-run", "other-kind", "locked"]


@pytest.fixture
def world(tmp_path):
    R = fake_run(tmp_path / "R")
    (R / "model.pdb").write_text("END\n")
    fake_run(tmp_path / "H", kind="heterogeneity")
    return tmp_path


def _live_lock(folder: Path, name: str = LOCK_NAME) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "verb": "refine",
                                           "since": "2026-01-01 00:00:00"}))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("verb", VERBS)
def test_output_rule(world, capsys, verb, case):
    R = world / "R"
    args, as_input, to_file = verb_cases(R)[verb]
    if case == "is-input":
        out, must = as_input, []
    elif case == "inside-input-run":
        out, must = R / "final" / ("sub.star" if to_file else "sub"), ["input run" if not to_file else "inside"]
    elif case == "other-kind":
        other = world / "H" if verb != "heterogeneity" else world / "G"
        if verb == "heterogeneity":
            fake_run(other, kind="global")
        out, must = (other / "x.star" if to_file else other), []
    else:
        lock_dir = world / "busy"
        if to_file:
            out = lock_dir / "x.star"
            name = f".{out.name}{LOCK_NAME}"
            if verb == "build-gmm":
                out, name = lock_dir / "x", f".x.gmm.npz{LOCK_NAME}"
            _live_lock(lock_dir, name)
        else:
            out = lock_dir
            _live_lock(lock_dir)
        must = ["in use by", f"PID {os.getppid()}"]
    before = tree(world)
    rc, err, _ = run_verb(capsys, verb, *args, "--out", out)
    assert_one_error(rc, err, *must, verb=verb)
    assert tree(world) == before, f"{verb} {case}: something was written or changed"


def test_stale_lock_is_taken_over_and_released(world, capsys):
    R = world / "R"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = world / "exp"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "verb": "x"}))
    rc, err, _ = run_verb(capsys, "expand-symmetry", "--particles", R / "final/particles.star", "--sym", "C2",
                          "--out", out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["particles.star", "summary.json"]  # no lock left
    # the same kind again: allowed (replaces its own outputs); its folder is now an "expand-symmetry" output
    assert folder_kind(out) == "expand-symmetry"
    rc, err, _ = run_verb(capsys, "expand-symmetry", "--particles", R / "final/particles.star", "--sym", "C2",
                          "--out", out)
    assert rc == 0, err


def test_expand_symmetry_refuses_expanded_input_and_a_file_out(world, capsys):
    R = world / "R"
    exp = world / "exp"
    assert run_verb(capsys, "expand-symmetry", "--particles", R / "final/particles.star", "--sym", "C2",
                    "--out", exp)[0] == 0
    before = tree(world)
    rc, err, _ = run_verb(capsys, "expand-symmetry", "--particles", exp / "particles.star", "--sym", "C2",
                          "--out", world / "exp2")
    assert_one_error(rc, err, "already symmetry-expanded", verb="expand-symmetry")
    f = world / "afile"
    f.write_text("x")
    before = tree(world)
    rc, err, _ = run_verb(capsys, "expand-symmetry", "--particles", R / "final/particles.star", "--sym", "C2",
                          "--out", f)
    assert_one_error(rc, err, "is a file", verb="expand-symmetry")
    assert tree(world) == before


def test_claim_records_the_kind_for_rundir(tmp_path):
    from gmmcore.refine.rundir import RunDir

    out = tmp_path / "run"
    claim_output(out, "focused", "refine-focused")
    try:
        RunDir.create_or_continue(out, {"source": "a"}, ("source",))
        assert json.loads((out / "params.json").read_text())["kind"] == "focused"
    finally:
        release_claims()
    assert not (out / LOCK_NAME).exists()
    # a run of another kind is refused by RunDir itself (library use, no claim) ...
    with pytest.raises(InputError, match="'focused' run|kind 'focused'"):
        RunDir.create_or_continue(out, {"patches": 3}, ("patches",), kind="patches")
    # ... and so is a run of unknown kind sharing no identity parameter (the old data-loss case)
    (out / "params.json").write_text(json.dumps({"source": "a"}))
    with pytest.raises(InputError, match="another kind"):
        RunDir.create_or_continue(out, {"patches": 3}, ("patches", "iterations"))
    assert json.loads((out / "params.json").read_text()) == {"source": "a"}


def _holder(out: Path, kind: str, verb: str, keys=None) -> subprocess.Popen:
    """Another process that claims ``out`` and keeps it until killed."""
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys,time; sys.path.insert(0, %r)\n"
                              "from gmmcore.safewrite import claim_output\n"
                              "claim_output(%r, %r, %r, lock_keys=%r); print('ok', flush=True); time.sleep(60)"
                              % (str(Path(__file__).resolve().parents[1]), str(out), kind, verb, keys)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ok"
    return child


def test_patch_workers_share_a_run_but_not_a_patch(tmp_path):
    out = tmp_path / "patches"
    child = _holder(out, "patches", "refine-patches", ["patch_01"])
    try:
        claim_output(out, "patches", "refine-patches", lock_keys=["patch_02"])  # another patch: fine
        release_claims()
        with pytest.raises(InputError, match="in use by `gmmcore refine-patches`"):
            claim_output(out, "patches", "refine-patches", lock_keys=["patch_01"])
        with pytest.raises(InputError, match="in use by"):
            claim_output(out, "patches", "refine-patches")  # the whole run (the composite) waits
    finally:
        child.kill()
        child.wait()
        release_claims()


def test_second_claim_on_a_busy_folder_names_the_first(tmp_path):
    out = tmp_path / "o"
    child = _holder(out, "global", "refine")
    try:
        with pytest.raises(InputError, match=f"in use by `gmmcore refine` \\(PID {child.pid} on"):
            claim_output(out, "global", "refine")
    finally:
        child.kill()
        child.wait()
    claim_output(out, "global", "refine")  # its process is gone: the lock is stale
    release_claims()
