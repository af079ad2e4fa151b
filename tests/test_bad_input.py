"""Bad input: one clear error line naming the file and the field, exit code 2, nothing left in --out."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tests import helpers
from tests.helpers import cs_records, random_particles, save_cs, star31_text, write_stacks

REPO = Path(__file__).resolve().parents[1]


def run_import(capsys, *args):
    return helpers.run_verb(capsys, "import", *args)[:2]


def assert_one_error(rc, err, *must_contain):
    helpers.assert_one_error(rc, err, *must_contain, verb="import")


def _star(tmp_path, text_kw=None, P=None, stacks=True):
    P = P or random_particles(n=8, seed=40)
    if stacks:
        write_stacks(tmp_path, P)
    f = tmp_path / "in.star"
    f.write_text(star31_text(P, **(text_kw or {})))
    return P, f


def test_missing_file(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", tmp_path / "nothere.star", "--out", out)
    assert_one_error(rc, err, tmp_path / "nothere.star", "file not found")
    assert not out.exists()


def test_missing_file_subprocess(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, GMMCORE_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "gmmcore", "import", "--star", str(tmp_path / "nothere.star"),
                        "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(tmp_path / "nothere.star") in lines[0]
    assert not out.exists()


def test_missing_column(tmp_path, capsys):
    _, f = _star(tmp_path, {"drop": ("rlnAngleTilt",)})
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--out", out)
    assert_one_error(rc, err, f, "rlnAngleTilt")
    assert not out.exists()


def test_wrong_block(tmp_path, capsys):
    f = tmp_path / "micrographs.star"
    f.write_text("\ndata_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnCtfMaxResolution #2\n"
                 "mic1.mrc\t3.5\nmic2.mrc\t4.1\n")
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--out", out)
    assert_one_error(rc, err, f, "data_particles", "data_micrographs")
    assert not out.exists()


def test_not_a_star_file(tmp_path, capsys):
    f = tmp_path / "junk.star"
    f.write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--out", out)
    assert_one_error(rc, err, f)
    assert not out.exists()


def test_optics_group_missing(tmp_path, capsys):
    P = random_particles(n=6, seed=41)
    _, f = _star(tmp_path, {"groups": [(1, "opticsGroup1", 1.5), (3, "opticsGroup3", 1.5)]}, P=P)
    text = f.read_text().replace("opticsGroup3\t3\t", "opticsGroup3\t4\t")  # particles still say 3
    f.write_text(text)
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--out", out)
    assert_one_error(rc, err, f, "rlnOpticsGroup", "[3]")
    assert not out.exists()


def test_nan_angle(tmp_path, capsys):
    P = random_particles(n=6, seed=42)
    P["psi"][3] = np.nan
    _, f = _star(tmp_path, P=P)
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--out", out)
    assert_one_error(rc, err, f, "rlnAnglePsi", "row 4")
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_image(tmp_path, capsys):
    P = random_particles(n=30, seed=43, n_stack=2)
    _, f = _star(tmp_path, P=P)
    stack = tmp_path / "stack1.mrcs"
    with mrcfile.open(str(stack), mode="r+") as m:
        m.data[6, 3, 4] = np.nan
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, err = run_import(capsys, "--star", f, "--chunk", 5, "--out", out)
    assert_one_error(rc, err, stack.resolve(), "image 7", "NaN")
    # the folder existed: only what the import created is gone
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_pixel_size_mismatch_cs(tmp_path, capsys):
    P = random_particles(n=5, seed=44, apix=1.5)
    cs = save_cs(tmp_path / "particles.cs", cs_records(P))
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--cs", cs, "--apix", "1.2", "--metadata-only", "--out", out)
    assert_one_error(rc, err, cs, "blob/psize_A", "--apix 1.2")
    assert not out.exists()


def test_pixel_size_mismatch_star(tmp_path, capsys):
    _, f = _star(tmp_path)
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--apix", "3.0", "--out", out)
    assert_one_error(rc, err, f, "rlnImagePixelSize")
    assert not out.exists()


def test_no_half_split(tmp_path, capsys):
    _, f = _star(tmp_path, {"half": False})
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--out", out)
    assert_one_error(rc, err, f, "rlnRandomSubset", "--new-split")
    assert not out.exists()


def test_no_half_split_cs(tmp_path, capsys):
    P = random_particles(n=5, seed=45)
    cs = save_cs(tmp_path / "particles.cs", cs_records(P, split=False))
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--cs", cs, "--metadata-only", "--out", out)
    assert_one_error(rc, err, cs, "alignments3D/split", "--new-split")
    assert not out.exists()


def test_missing_stack(tmp_path, capsys):
    _, f = _star(tmp_path, stacks=False)
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--out", out)
    assert_one_error(rc, err, f, "rlnImageName", "stack0.mrcs", "--stack-root")
    assert not out.exists()


def test_wrong_image_size(tmp_path, capsys):
    P = random_particles(n=4, seed=46)
    write_stacks(tmp_path, dict(P, box=12))
    f = tmp_path / "in.star"
    f.write_text(star31_text(P))
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--star", f, "--out", out)
    assert_one_error(rc, err, "stack0.mrcs", "rlnImageSize", "12x12")
    assert not out.exists()


def test_cs_not_numpy(tmp_path, capsys):
    cs = tmp_path / "particles.cs"
    cs.write_text("this is not numpy")
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--cs", cs, "--out", out)
    assert_one_error(rc, err, cs, "not a cryoSPARC .cs")
    assert not out.exists()


def test_cs_missing_field(tmp_path, capsys):
    P = random_particles(n=4, seed=47)
    rec = cs_records(P)
    names = [n for n in rec.dtype.names if n != "alignments3D/pose"]
    cs = save_cs(tmp_path / "particles.cs", rec[names].copy())
    out = tmp_path / "out"
    rc, err = run_import(capsys, "--cs", cs, "--out", out)
    assert_one_error(rc, err, cs, "alignments3D/pose")
    assert not out.exists()


@pytest.mark.parametrize("blocked, backend, hint", [("tensorflow", "tf", "--backend jax"),
                                                    ("jax", "jax", "--backend tf")])
def test_missing_array_library(tmp_path, blocked, backend, hint):
    """An array library the environment lacks: one line naming it and the other backend, exit 2."""
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from gmmcore.cli import main\n"
            f"sys.exit(main(['simulate', '--n', '20', '--box', '32', '--backend', {backend!r}, '--out', sys.argv[1]]))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sim")], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    err = p.stderr.strip()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("gmmcore simulate: error:") and "not installed" in err and hint in err, err
    assert not (tmp_path / "sim").exists() or not any((tmp_path / "sim").iterdir())
