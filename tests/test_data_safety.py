"""Never lose data, never leave debris (issue 7): outputs that would replace inputs are refused for
every verb before anything is written; bad --out paths are one line; a full disk is one line, not
SIGBUS; an interrupted import removes its temporaries (and the next run removes a killed one's);
written stacks get the usual permissions; errors suggest only options the running verb has.
"""
from __future__ import annotations

import errno
import hashlib
import os
import signal
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from gmmcore.cli import main
from gmmcore.errors import InputError
from gmmcore.safewrite import check_output_path, is_temporary, refuse_overwriting_inputs
from tests.helpers import assert_one_error, random_particles, run_verb, star31_text, write_stacks


def run(capsys, verb, *args):
    return run_verb(capsys, verb, *args)[:2]


def one_error(rc, err, verb, *must):
    return assert_one_error(rc, err, *must, verb=verb)


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def stack_create_layout(folder: Path, n=12, seed=80):
    """The folder relion_stack_create writes: particles.star + particles.mrcs (names relative to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    P = random_particles(n=n, seed=seed)
    P["half"] = np.arange(n) % 2 + 1
    write_stacks(folder, P, names={0: "particles.mrcs"})
    text = star31_text(P).replace("@stack0.mrcs", "@particles.mrcs")
    (folder / "particles.star").write_text(text)
    return folder / "particles.star"


# ------------------------------------------------------------------------------------------------
# data loss
# ------------------------------------------------------------------------------------------------
def test_import_into_the_inputs_own_folder_refused(tmp_path, capsys):
    star = stack_create_layout(tmp_path / "stack_create")
    before = digest(star.parent)
    for flags in ([], ["--metadata-only"], ["--no-phase-flip"]):
        rc, err = run(capsys, "import", "--star", star, *flags, "--out", star.parent)
        one_error(rc, err, "import", star.parent, "--out", "is the folder of the input", "choose another")
        assert digest(star.parent) == before  # byte-identical, nothing added
    # the folder holding the stacks (the star elsewhere) is refused too
    other = tmp_path / "elsewhere.star"
    other.write_text(star.read_text().replace("@particles.mrcs", f"@{star.parent}/particles.mrcs"))
    rc, err = run(capsys, "import", "--star", other, "--out", star.parent)
    one_error(rc, err, "import", "is the folder of the input", "particles.mrcs")
    assert digest(star.parent) == before
    # a folder below the input's is fine
    rc, err = run(capsys, "import", "--star", star, "--out", star.parent / "imported")
    assert rc == 0, err
    assert {k: v for k, v in digest(star.parent).items() if k != "imported"} == before


def test_every_verb_refuses_to_overwrite_its_inputs(tmp_path, capsys):
    star = stack_create_layout(tmp_path / "d")
    before = digest(star.parent)
    # reconstruct / refine: their --out may not be the particles' folder
    rc, err = run(capsys, "reconstruct", "--particles", star, "--out", star.parent)
    one_error(rc, err, "reconstruct", "is the folder of the input")
    rc, err = run(capsys, "refine", "--cpu", "--particles", star, "--out", star.parent)
    one_error(rc, err, "refine", "is the folder of the input")
    # export: --out may not be the particles, the reference or a referenced stack
    for target in (star, star.parent / "particles.mrcs"):
        rc, err = run(capsys, "export", "--particles", star, "--format", "relion", "--out", target)
        one_error(rc, err, "export", "would replace the input")
    ref = tmp_path / "ref.star"
    ref.write_text(star.read_text())
    rc, err = run(capsys, "export", "--particles", star, "--format", "relion", "--reference", ref, "--out", ref)
    one_error(rc, err, "export", "would replace the input", ref)
    assert digest(star.parent) == before and ref.read_text() == star.read_text()
    # build-gmm: PREFIX.pdb may not be the --seed-model
    model = tmp_path / "m.pdb"
    model.write_text("END\n")
    rc, err = run(capsys, "build-gmm", "--map", tmp_path / "x.mrc", "--resolution", 5, "--seed-model", model,
                  "--out", tmp_path / "m")
    one_error(rc, err, "build-gmm", "would replace the input", model)
    assert model.read_text() == "END\n"
    # simulate: an output name may not be its --model
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "particles_true.star").write_text("mine")
    rc, err = run(capsys, "simulate", "--model", sim / "particles_true.star", "--out", sim)
    one_error(rc, err, "simulate", "would replace the input")
    assert (sim / "particles_true.star").read_text() == "mine"


def test_refuse_overwriting_inputs_links(tmp_path):
    a = tmp_path / "a.mrcs"
    a.write_bytes(b"data")
    os.link(a, tmp_path / "hard.mrcs")
    (tmp_path / "soft.mrcs").symlink_to(a)
    for out in ("hard.mrcs", "soft.mrcs", "a.mrcs"):
        with pytest.raises(InputError, match="would replace the input"):
            refuse_overwriting_inputs([tmp_path / out], [a])
    refuse_overwriting_inputs([tmp_path / "b.mrcs"], [a])


# ------------------------------------------------------------------------------------------------
# bad --out paths: one line each
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def star(tmp_path):
    return stack_create_layout(tmp_path / "in")


@pytest.mark.parametrize("verb", ["import", "reconstruct", "refine", "simulate", "export", "build-gmm"])
def test_bad_out_paths(tmp_path, capsys, star, verb):
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = {"import": ["--star", star, "--metadata-only"], "reconstruct": ["--particles", star],
            "refine": ["--cpu", "--particles", star], "simulate": ["--n", "4", "--box", "16"],
            "export": ["--particles", star, "--format", "relion"],
            "build-gmm": ["--map", tmp_path / "none.mrc", "--resolution", "5"]}[verb]
    cases = [(afile / "below", "is below"), (tmp_path / ("n" * 300), "bytes long")]
    if verb in ("import", "reconstruct", "refine", "simulate"):
        cases.append((afile, "is a file, not a folder"))
    elif verb == "export":
        cases.append((tmp_path, "is a folder"))
    for out, words in cases:
        rc, err = run(capsys, verb, *args, "--out", out)
        one_error(rc, err, verb, "--out", words)
    assert afile.read_text() == "x"


def test_read_only_file_system(tmp_path, monkeypatch):
    real = os.statvfs

    class RO:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, k):
            return os.ST_RDONLY if k == "f_flag" else getattr(self.st, k)

    monkeypatch.setattr(os, "statvfs", lambda p: RO(real(p)))
    with pytest.raises(InputError, match="read-only file system"):
        check_output_path(tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# full disk, interruption, temporaries, permissions
# ------------------------------------------------------------------------------------------------
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, star):
    import gmmcore.io.stacks as stacks

    calls = []

    def full(fd, data, offset):
        calls.append(offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(stacks.os, "pwrite", full)
    out = tmp_path / "o"
    rc, err = run(capsys, "import", "--star", star, "--out", out)
    one_error(rc, err, "import", "No space left on device")
    assert calls and not out.exists()


def test_not_enough_space_refused_before_writing(tmp_path, capsys, monkeypatch, star):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "o"
    rc, err = run(capsys, "import", "--star", star, "--out", out)
    one_error(rc, err, "import", "not enough free space", "GB needed")
    assert not out.exists()


def test_sigterm_during_import_removes_the_temporary(tmp_path, capsys, monkeypatch):
    import gmmcore.ctf as ctf

    star = stack_create_layout(tmp_path / "in", n=40)
    real = ctf.phase_flip
    seen = []

    def flip_then_terminate(images, *a, **k):
        seen.append(sorted(p.name for p in out.iterdir()))
        os.kill(os.getpid(), signal.SIGTERM)  # as Scipion's "stop" or a batch system would
        return real(images, *a, **k)

    monkeypatch.setattr(ctf, "phase_flip", flip_then_terminate)
    out = tmp_path / "o"
    rc = main(["import", "--star", str(star), "--chunk", "10", "--out", str(out)])
    assert rc == 130
    assert "interrupted" in capsys.readouterr().err
    assert any(is_temporary(n) for n in seen[0])  # the stack was being written ...
    assert not [p for p in out.rglob("*") if is_temporary(p.name)]  # ... and its temporary is gone
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_stale_temporary_of_a_killed_import_removed(tmp_path, capsys, star):
    out = tmp_path / "o"
    out.mkdir()
    stale = out / ".particles.mrcs.k3j_x9qa.part.mrcs"  # what SIGKILL leaves
    stale.write_bytes(bytes(4096))
    (out / "keep.txt").write_text("mine")
    rc, err = run(capsys, "import", "--star", star, "--out", out)
    assert rc == 0, err
    assert "removed 1 temporary file" in err
    assert not stale.exists() and (out / "keep.txt").read_text() == "mine"


def test_written_stack_has_umask_permissions(tmp_path, capsys, star):
    old = os.umask(0o022)
    try:
        rc, err = run(capsys, "import", "--star", star, "--out", tmp_path / "o")
    finally:
        os.umask(old)
    assert rc == 0, err
    for name in ("particles.mrcs", "particles.star", "summary.json"):
        assert (tmp_path / "o" / name).stat().st_mode & 0o777 == 0o644, name
    with mrcfile.open(tmp_path / "o" / "particles.mrcs") as m:  # a valid stack (strict mode)
        assert m.is_image_stack() and m.data.shape == (12, 16, 16)


# ------------------------------------------------------------------------------------------------
# errors suggest only what the running verb (or form) offers
# ------------------------------------------------------------------------------------------------
def test_missing_stack_remedy_per_verb(tmp_path, capsys, star):
    (star.parent / "particles.mrcs").rename(tmp_path / "moved.mrcs")
    line = one_error(*run(capsys, "import", "--star", star, "--out", tmp_path / "o"), "import")
    assert "particles.mrcs" in line and "use --stack-root DIR" in line
    line = one_error(*run(capsys, "reconstruct", "--particles", star, "--out", tmp_path / "r"), "reconstruct")
    assert "particles.mrcs" in line and "use --stack-root" not in line
    assert "re-import the particles with gmmcore import --stack-root DIR" in line
    # from the Scipion form: the field's label instead of the option
    line = one_error(*run(capsys, "import", "--star", star, "--out", tmp_path / "o",
                          "--form-field", "stack-root=Particle stacks folder", "apix=Pixel size"), "import")
    assert line.endswith('set "Particle stacks folder" in the form') and "--stack-root" not in line.split(";")[-1]
