"""The ``import`` and ``export`` verbs end to end (through gmmcore.cli.main)."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gmmcore.cli import main
from gmmcore.io.cryosparc import load_cs, read_cs
from gmmcore.io.star import read_star, read_star_blocks, write_star
from gmmcore.io.stacks import iter_images
from tests.helpers import assert_same_rotations, cs_records, random_particles, save_cs, star31_text, write_stacks


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("GMMCORE_NO_PROGRESS", "1")
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv


def cli(*args):
    return main([str(a) for a in args])


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def flipped_reference(img, P, i):
    """sign(CTF)·FT(img) back to real space, with an independent RELION CTF (no astigmatism)."""
    n = img.shape[0]
    apix = P["apix"]
    ky = np.fft.fftfreq(n)[:, None] / apix
    kx = np.fft.rfftfreq(n)[None, :] / apix
    s2 = kx ** 2 + ky ** 2
    volts = P["voltage"] * 1e3
    lam = 12.2643247 / np.sqrt(volts * (1 + volts * 0.978466e-6))
    dz = P["du"][i]  # underfocus, Å (du == dv here)
    cs_A = P["cs"] * 1e7
    q = P["q0"]
    # RELION: CTF = -sin(chi), chi = -pi*lam*dz*s^2 + pi/2*Cs*lam^3*s^4 - atan(q/sqrt(1-q^2))
    chi = -np.pi * lam * dz * s2 + 0.5 * np.pi * cs_A * lam ** 3 * s2 ** 2 - np.arctan(q / np.sqrt(1 - q * q))
    ctf = -np.sin(chi)
    return np.fft.irfft2(np.fft.rfft2(img.astype(np.float64)) * np.sign(ctf), s=(n, n))


def _star_input(tmp_path, n=14, n_stack=2, seed=20, **kw):
    P = random_particles(n=n, seed=seed, n_stack=n_stack, box=24, apix=2.0)
    P["dv"] = P["du"].copy()  # non-astigmatic, so the reference CTF above is exact
    data = tmp_path / "data"
    data.mkdir()
    imgs = write_stacks(data, P)
    star = data / "run_data.star"
    star.write_text(star31_text(P, **kw))
    return P, imgs, star


def test_import_star_phase_flips(tmp_path):
    P, imgs, star = _star_input(tmp_path)
    before = {f.name: md5(f) for f in star.parent.iterdir()}
    out = tmp_path / "imp"
    assert cli("import", "--star", star, "--out", out) == 0
    # inputs untouched
    assert {f.name: md5(f) for f in star.parent.iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["particles.mrcs", "particles.star", "summary.json"]
    with mrcfile.open(out / "particles.mrcs") as m:
        flipped = m.data.copy()
        assert m.voxel_size.x == pytest.approx(2.0)
    for i in range(P["n"]):
        exp = flipped_reference(imgs[i], P, i)
        np.testing.assert_allclose(flipped[i], exp, atol=2e-5 * np.abs(exp).max())
    # flipping actually changed the images (high-frequency content has negative CTF)
    assert np.abs(flipped - imgs).max() > 0.1
    t = read_star(out / "particles.star")
    assert t.phase_flipped
    assert t.image_name[0] == "000001@particles.mrcs" and t.image_name[13] == "000014@particles.mrcs"
    rows, block = next(iter_images(t, chunk=100))
    np.testing.assert_array_equal(block, flipped[rows])
    from gmmcore.geometry import euler_to_matrix
    assert_same_rotations(t.rotation, euler_to_matrix(P["rot"], P["tilt"], P["psi"]))
    np.testing.assert_allclose(t.origin, P["origin_A"], atol=1e-6)
    np.testing.assert_array_equal(t.half, P["half"])
    # original names kept for export; unknown columns survive
    sp = t.star_particles
    assert sp["rlnImageOriginalName"].tolist()[:2] == ["000001@stack0.mrcs", "000001@stack1.mrcs"]
    np.testing.assert_allclose(sp["rlnMyExtraColumn"], P["extra"], atol=1e-6)
    s = json.loads((out / "summary.json").read_text())
    assert s["n_particles"] == 14
    assert s["per_half"] == {"1": int((P["half"] == 1).sum()), "2": int((P["half"] == 2).sum())}
    assert s["per_optics_group"] == {"1": 14}
    assert s["phase_flipped"] is True and s["format"] == "relion3.1" and s["split"] == "input"
    assert s["source"] == str(star.resolve())


def test_import_chunked_equals_single_chunk(tmp_path):
    P, imgs, star = _star_input(tmp_path, n=17, n_stack=3)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("import", "--star", star, "--chunk", 4, "--out", a) == 0
    assert cli("import", "--star", star, "--chunk", 100, "--out", b) == 0
    with mrcfile.open(a / "particles.mrcs") as ma, mrcfile.open(b / "particles.mrcs") as mb:
        assert ma.data.shape == (17, 24, 24)
        np.testing.assert_array_equal(ma.data, mb.data)
    assert (a / "particles.star").read_text() == (b / "particles.star").read_text()


def test_import_metadata_only_keeps_original_stacks(tmp_path):
    P, imgs, star = _star_input(tmp_path, version="50001")
    out = tmp_path / "imp"
    assert cli("import", "--star", star, "--metadata-only", "--out", out) == 0
    assert not (out / "particles.mrcs").exists()
    t = read_star(out / "particles.star")
    assert not t.phase_flipped
    assert t.image_name[1] == f"000001@{(star.parent / 'stack1.mrcs').resolve()}"
    for rows, block in iter_images(t, chunk=5):
        np.testing.assert_array_equal(block, imgs[rows])
    s = json.loads((out / "summary.json").read_text())
    assert s["phase_flipped"] is False and s["format"] == "relion5"


def test_import_no_phase_flip(tmp_path):
    P, imgs, star = _star_input(tmp_path)
    out = tmp_path / "imp"
    assert cli("import", "--star", star, "--no-phase-flip", "--out", out) == 0
    assert not (out / "particles.mrcs").exists()
    t = read_star(out / "particles.star")
    assert not t.phase_flipped and Path(t.image_name[0].split("@")[1]).is_absolute()


def test_import_new_split(tmp_path, capsys):
    P, imgs, star = _star_input(tmp_path, n=11, half=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("import", "--star", star, "--metadata-only", "--new-split", "--out", a) == 0
    assert "random split" in capsys.readouterr().err
    assert cli("import", "--star", star, "--metadata-only", "--new-split", "--out", b) == 0
    ta, tb = read_star(a / "particles.star"), read_star(b / "particles.star")
    np.testing.assert_array_equal(ta.half, tb.half)  # fixed seed
    assert sorted(np.bincount(ta.half)[1:].tolist()) == [5, 6]
    s = json.loads((a / "summary.json").read_text())
    assert s["split"] == "new-random" and s["per_half"] in ({"1": 6, "2": 5}, {"1": 5, "2": 6})


def _cs_project(tmp_path, n=10, seed=30):
    """cryoSPARC-like project: proj/J12/extract/*.mrcs, proj/J20/particles.cs (paths relative to proj)."""
    P = random_particles(n=n, seed=seed, n_stack=2, box=24, apix=2.0)
    P["dv"] = P["du"].copy()
    ext = tmp_path / "proj" / "J12" / "extract"
    ext.mkdir(parents=True)
    imgs = write_stacks(ext, P)
    job = tmp_path / "proj" / "J20"
    job.mkdir()
    rec = cs_records(P)
    cs = save_cs(job / "particles.cs", rec)
    return P, imgs, cs, rec


def test_import_cs_then_export_cs_with_reference(tmp_path):
    P, imgs, cs, rec = _cs_project(tmp_path)
    out = tmp_path / "imp"
    assert cli("import", "--cs", cs, "--out", out) == 0
    with mrcfile.open(out / "particles.mrcs") as m:
        for i in range(P["n"]):
            exp = flipped_reference(imgs[i], P, i)
            np.testing.assert_allclose(m.data[i], exp, atol=2e-5 * np.abs(exp).max())
    s = json.loads((out / "summary.json").read_text())
    assert s["format"] == "cryosparc" and s["phase_flipped"] is True
    # a "refinement" changes poses; export back onto the original .cs
    t = read_star(out / "particles.star")
    R = Rotation.random(P["n"], random_state=5).as_matrix()
    o = np.random.default_rng(5).uniform(-3, 3, (P["n"], 2))
    refined = tmp_path / "refined.star"
    write_star(t.with_poses(R, o), refined)
    exp_cs = tmp_path / "exported.cs"
    assert cli("export", "--particles", refined, "--format", "cryosparc", "--reference", cs, "--out", exp_cs) == 0
    back = load_cs(exp_cs)
    assert back.dtype == rec.dtype
    for name in ("uid", "blob/path", "blob/idx", "alignments3D/error", "location/micrograph_path", "ctf/df1_A"):
        np.testing.assert_array_equal(back[name], rec[name], err_msg=name)
    np.testing.assert_array_equal(back["alignments3D/split"], rec["alignments3D/split"])
    tb = read_cs(exp_cs)
    assert_same_rotations(tb.rotation, R, tol=2e-6)
    np.testing.assert_allclose(tb.origin, o, atol=5e-6)
    # the same refined particles as a RELION star of the original (unflipped) cryoSPARC stacks
    exp_star = tmp_path / "exported.star"
    assert cli("export", "--particles", refined, "--format", "relion", "--reference", cs, "--out", exp_star) == 0
    ts = read_star(exp_star)
    assert not ts.phase_flipped
    assert ts.image_name[1] == f"000001@{(cs.parent.parent / 'J12/extract/stack1.mrcs').resolve()}"
    assert_same_rotations(ts.rotation, R)
    np.testing.assert_allclose(ts.origin, o, atol=1e-6)
    for rows, block in iter_images(ts, chunk=4):
        np.testing.assert_array_equal(block, imgs[rows])


def test_export_relion_with_reference_restores_original_names(tmp_path):
    P, imgs, star = _star_input(tmp_path, n=9)
    out = tmp_path / "imp"
    assert cli("import", "--star", star, "--out", out) == 0
    t = read_star(out / "particles.star")
    sub = t.subset(np.array([8, 2, 5, 0]))  # a subset, reordered
    R = Rotation.random(4, random_state=6).as_matrix()
    o = np.full((4, 2), 1.5)
    refined = tmp_path / "refined.star"
    write_star(sub.with_poses(R, o), refined)
    exp = tmp_path / "exported.star"
    assert cli("export", "--particles", refined, "--format", "relion", "--reference", star, "--out", exp) == 0
    te = read_star(exp)
    orig = read_star(star)
    assert list(te.image_name) == [orig.image_name[i] for i in (8, 2, 5, 0)]
    assert not te.phase_flipped  # the original, unflipped particles
    assert_same_rotations(te.rotation, R)
    np.testing.assert_allclose(te.origin, o, atol=1e-6)
    np.testing.assert_allclose(te.star_particles["rlnMyExtraColumn"], P["extra"][[8, 2, 5, 0]], atol=1e-6)
    # without a reference: the refined star as is (phase-flipped stack, flag set)
    plain = tmp_path / "plain.star"
    assert cli("export", "--particles", refined, "--format", "relion", "--out", plain) == 0
    tp = read_star(plain)
    assert tp.phase_flipped and tp.image_name[0] == "000009@particles.mrcs"
    blocks, _ = read_star_blocks(plain)
    assert blocks["optics"]["rlnCtfDataArePhaseFlipped"].tolist() == [1]


def test_export_count_mismatch_is_an_error(tmp_path, capsys):
    P, imgs, cs, rec = _cs_project(tmp_path, n=6)
    other = tmp_path / "other.star"
    P2 = random_particles(n=4, seed=99)
    other.write_text(star31_text(P2, prefix="elsewhere/"))
    out = tmp_path / "x.cs"
    assert cli("export", "--particles", other, "--format", "cryosparc", "--reference", cs, "--out", out) == 2
    err = capsys.readouterr().err
    assert "particles.cs" in err and "blob/path" in err and "(4)" in err and "6 records" in err
    assert not out.exists()
