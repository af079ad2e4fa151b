"""Every check before any write (issue 19): the cases a new user met — each refused with one line,
exit code 2, nothing written (so the corrected command is not refused for the folder the bad one
left); an interrupted re-import never pairs the old star with the new stack; SIGTERM is
"interrupted" (exit code 130) in every verb.

Inputs are tiny: a fake finished run (star + stack of 16-pixel images, two 16³ half maps, two
20-Gaussian GMMs, a summary naming them) that the checks read before any real work starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from gmmcore.gmm.model import GMM
from gmmcore.io.maps import write_map
from tests.helpers import assert_one_error, random_particles, run_verb, save_cs, star31_text, write_stacks

BOX, APIX = 16, 1.5


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def particles(folder: Path, n=40, seed=3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    P = random_particles(n=n, seed=seed, box=BOX, apix=APIX)
    P["half"] = np.arange(n) % 2 + 1
    write_stacks(folder, P, seed=seed, names={0: "particles.mrcs"})
    star = folder / "particles.star"
    star.write_text(star31_text(P).replace("@stack0.mrcs", "@particles.mrcs"))
    return star


def ball(radius_px=4.0, center=(BOX // 2,) * 3) -> np.ndarray:
    z, y, x = np.indices((BOX,) * 3)
    r = np.sqrt((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2)
    return (r <= radius_px).astype(np.float32)


@pytest.fixture
def world(tmp_path):
    """tmp/R: a finished global run (as far as the checks read it); tmp/in: masks and a map."""
    R = tmp_path / "R"
    fin = R / "final"
    particles(fin)
    rng = np.random.default_rng(0)
    density = ball(5) * 1.0
    for h in (1, 2):
        write_map(fin / f"half{h}.mrc", density + 0.1 * rng.normal(size=(BOX,) * 3), APIX)
        GMM(rng.normal(scale=2.0, size=(20, 3)), np.ones(20), np.full(20, 2.0)).save(fin / f"gmm_half{h}.gmm.npz")
    (R / "params.json").write_text(json.dumps({"kind": "global"}))
    (R / "summary.json").write_text(json.dumps({"schema": 2, "kind": "global", "params": {}, "iterations": [],
                                                "final": {"resolution": 8.0, "resolution_initial": 9.0}}))
    ins = tmp_path / "in"
    ins.mkdir()
    write_map(ins / "zero.mrc", np.zeros((BOX,) * 3), APIX)
    write_map(ins / "centre.mrc", ball(5), APIX)
    corner = np.zeros((BOX,) * 3, np.float32)
    corner[:6, :6, :6] = 1.0
    write_map(ins / "corner.mrc", corner, APIX)
    write_map(ins / "other_apix.mrc", density, 2.0 * APIX)
    return tmp_path


def refused(world, capsys, verb, args, *must):
    before = tree(world)
    rc, err, _ = run_verb(capsys, verb, *args)
    line = assert_one_error(rc, err, *must, verb=verb)
    assert tree(world) == before, f"{verb} wrote before refusing: {line}"
    return line


# ------------------------------------------------------------------------------------------------
# refine-focused / refine-patches / heterogeneity: refused before the run folder exists
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,must", [
    (["--ngauss", "0"], ["--ngauss"]),
    (["--lr-angle", "nan"], ["--lr-angle"]),
    (["--minres", "2"], ["--minres", "Nyquist"]),
    (["--maxres", "2"], ["--maxres", "Nyquist"]),
])
def test_focused_numbers_refused_before_writing(world, capsys, extra, must):
    out = world / "focused"
    refused(world, capsys, "refine-focused", ["--cpu", "--from", world / "R", "--mask", world / "in/centre.mrc",
                                              "--out", out, *extra], *must)
    refused(world, capsys, "refine-patches", ["--cpu", "--from", world / "R", "--patches", "2", "--out", out,
                                              *extra], *must)
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--mask", "--fsc-mask"])
def test_focused_empty_masks_refused(world, capsys, flag):
    args = ["--cpu", "--from", world / "R", "--mask", world / "in/centre.mrc", "--out", world / "f"]
    if flag == "--mask":
        args[4] = world / "in/zero.mrc"
    else:
        args += ["--fsc-mask", world / "in/zero.mrc"]
    refused(world, capsys, "refine-focused", args, flag, "empty")


def test_focused_from_maps_checks_the_band_on_their_grid(world, capsys):
    fin = world / "R/final"
    refused(world, capsys, "refine-focused", ["--cpu", "--particles", fin / "particles.star", "--half1",
                                              fin / "half1.mrc", "--half2", fin / "half2.mrc", "--mask",
                                              world / "in/centre.mrc", "--minres", "3", "--out", world / "f"],
            "--minres")


def test_patches_more_than_gaussians_and_empty_fsc_mask(world, capsys):
    out = world / "patches"
    refused(world, capsys, "refine-patches", ["--cpu", "--from", world / "R", "--patches", "300", "--out", out],
            "--patches", "20 Gaussians")
    refused(world, capsys, "refine-patches", ["--cpu", "--from", world / "R", "--patches", "2", "--patch", "3",
                                              "--out", out], "--patch")
    refused(world, capsys, "refine-patches", ["--cpu", "--from", world / "R", "--patches", "2", "--fsc-mask",
                                              world / "in/zero.mrc", "--out", out], "--fsc-mask", "empty")
    refused(world, capsys, "refine-patches", ["--cpu", "--from", world / "R", "--patches", "2", "--fsc-mask",
                                              world / "in/other_apix.mrc", "--out", out], "--fsc-mask")
    assert not out.exists()


def test_heterogeneity_bins_and_mask_refused_before_writing(world, capsys):
    out = world / "heter"
    base = ["--cpu", "--from", world / "R", "--out", out]
    refused(world, capsys, "heterogeneity", base + ["--bins", "1000"], "--bins", "100")
    refused(world, capsys, "heterogeneity", base + ["--bins", "3"], "--bins", "at most 2")
    refused(world, capsys, "heterogeneity", base + ["--bins", "1", "--mask", world / "in/corner.mrc"],
            "--mask", "no Gaussian")
    refused(world, capsys, "heterogeneity", base + ["--bins", "1", "--mask", world / "in/zero.mrc"], "--mask", "empty")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# local-resolution, expand-symmetry, export
# ------------------------------------------------------------------------------------------------
def test_local_resolution_bad_inputs(world, capsys):
    fin, out = world / "R/final", world / "lr"
    h1, h2 = fin / "half1.mrc", fin / "half2.mrc"
    copy = world / "in/copy.mrc"
    copy.write_bytes(h1.read_bytes())
    for args, must in (([h1, h1], ["same file"]), ([h1, copy], ["same map"]),
                       ([h1, world / "in/other_apix.mrc"], ["pixel size"])):
        refused(world, capsys, "local-resolution", ["--half1", args[0], "--half2", args[1], "--out", out],
                *must)
    refused(world, capsys, "local-resolution", ["--half1", h1, "--half2", h2, "--mask", world / "in/zero.mrc",
                                                "--out", out], "--mask", "empty")
    refused(world, capsys, "local-resolution", ["--half1", h1, "--half2", h2, "--window", "100", "--out", out],
            "--window", "larger than the 16-voxel box")
    assert not out.exists()


def test_local_resolution_states_its_memory(world, capsys):
    fin = world / "R/final"
    rc, err, _ = run_verb(capsys, "local-resolution", "--half1", fin / "half1.mrc", "--half2", fin / "half2.mrc",
                          "--window", "8", "--out", world / "lr")
    assert rc == 0, err
    assert "GB of working memory" in err


def test_export_reference_without_particles(world, capsys):
    from tests.helpers import cs_records

    rec = cs_records(random_particles(n=1))[:0]
    save_cs(world / "in/empty.cs", rec)
    refused(world, capsys, "export", ["--particles", world / "R/final/particles.star", "--format", "relion",
                                      "--reference", world / "in/empty.cs", "--out", world / "x.star"],
            "no particles")
    refused(world, capsys, "export", ["--particles", world / "R/final/particles.star", "--format", "cryosparc",
                                      "--reference", world / "in/empty.cs", "--out", world / "x.cs"],
            "0 records")


# ------------------------------------------------------------------------------------------------
# re-import: a star never pairs with a stack of another import
# ------------------------------------------------------------------------------------------------
def test_interrupted_reimport_never_pairs_old_star_with_new_stack(tmp_path, capsys):
    a, b = particles(tmp_path / "a", seed=1), particles(tmp_path / "b", seed=2)
    out = tmp_path / "imported"
    assert run_verb(capsys, "import", "--star", a, "--out", out)[0] == 0
    assert "# gmmcore stack particles.mrcs" in (out / "particles.star").read_text()
    old_star = (out / "particles.star").read_bytes()
    assert run_verb(capsys, "import", "--star", b, "--out", out)[0] == 0
    assert run_verb(capsys, "reconstruct", "--particles", out / "particles.star", "--out", tmp_path / "rec")[0] == 0
    # a kill between the stack's rename and the star's: the old star beside the new stack
    (out / "particles.star").write_bytes(old_star)
    rc, err, _ = run_verb(capsys, "reconstruct", "--particles", out / "particles.star", "--out", tmp_path / "rec2")
    assert_one_error(rc, err, "not the stack this star was written with", "run the import again",
                     verb="reconstruct")
    assert not (tmp_path / "rec2").exists()
    # the import run again repairs it
    assert run_verb(capsys, "import", "--star", a, "--out", out)[0] == 0
    assert run_verb(capsys, "reconstruct", "--particles", out / "particles.star", "--out", tmp_path / "rec2")[0] == 0


# ------------------------------------------------------------------------------------------------
# SIGTERM: the same in every verb
# ------------------------------------------------------------------------------------------------
def test_sigterm_is_interrupted_in_every_verb(world, capsys, monkeypatch):
    import gmmcore.expansion as expansion

    def killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(expansion, "expand_symmetry", killed)
    handler = signal.getsignal(signal.SIGTERM)
    rc, err, _ = run_verb(capsys, "expand-symmetry", "--particles", world / "R/final/particles.star", "--sym", "C2",
                          "--out", world / "exp")
    assert rc == 130 and err.splitlines()[-1].startswith("gmmcore expand-symmetry: interrupted"), err
    assert not list((world / "exp").glob(".gmmcore.lock*")) if (world / "exp").exists() else True
    assert signal.getsignal(signal.SIGTERM) == handler


def test_masks_that_miss_the_particle_are_refused(tmp_path, capsys):
    """A mask away from the density (the wrong origin, another box) is refused before writing."""
    rng = np.random.default_rng(5)
    density = ball(2.5, (3, 3, 3))
    for h in (1, 2):
        write_map(tmp_path / f"half{h}.mrc", density + 0.01 * rng.normal(size=(BOX,) * 3), APIX)
    far = np.zeros((BOX,) * 3, np.float32)
    far[11:, 11:, 11:] = 1.0
    write_map(tmp_path / "far.mrc", far, APIX)
    star = particles(tmp_path / "p")
    refused(tmp_path, capsys, "local-resolution", ["--half1", tmp_path / "half1.mrc", "--half2", tmp_path / "half2.mrc",
                                                   "--mask", tmp_path / "far.mrc", "--out", tmp_path / "lr"],
            "--mask", "does not overlap")
    for flag in ("--mask", "--fsc-mask"):
        args = ["--cpu", "--particles", star, "--half1", tmp_path / "half1.mrc", "--half2", tmp_path / "half2.mrc",
                "--mask", tmp_path / "far.mrc" if flag == "--mask" else tmp_path / "half1.mrc", "--out",
                tmp_path / "f"]
        if flag == "--fsc-mask":
            write_map(tmp_path / "near.mrc", ball(4, (4, 4, 4)), APIX)
            args[8] = tmp_path / "near.mrc"
            args += ["--fsc-mask", tmp_path / "far.mrc"]
        refused(tmp_path, capsys, "refine-focused", args, flag, "does not overlap")


def test_tensorflow_verbs_fail_in_clean_lines(world):
    """heterogeneity (a TensorFlow verb) in a fresh process: its stderr holds only its own lines —
    no absl/oneDNN start-up notices — and --gpu with no such GPU is the one warning (or error)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    p = subprocess.run([sys.executable, "-m", "gmmcore", "heterogeneity", "--gpu", "7", "--from", world / "R",
                        "--bins", "1", "--mask", world / "in/zero.mrc", "--out", world / "h"],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert all(line.startswith("gmmcore heterogeneity: ") for line in lines), p.stderr
    assert lines[-1].startswith("gmmcore heterogeneity: error: ") and len(lines) <= 2, p.stderr
    if len(lines) == 2:
        assert "GPU 7 requested; the engine sees no GPU" in lines[0]


# ------------------------------------------------------------------------------------------------
# refine / reconstruct --mask: the particle's map is known only once the run has made it
# ------------------------------------------------------------------------------------------------
def _radius_px(box: int) -> np.ndarray:
    z, y, x = np.indices((box,) * 3)
    return np.sqrt((z - box // 2) ** 2 + (y - box // 2) ** 2 + (x - box // 2) ** 2)


def test_mask_outside_the_particle_sphere_refused_before_writing(world, capsys, sim_small):
    """refine and reconstruct, which know the particle's map only once they have made it, refuse a
    mask whose weight lies only beyond box/2 from the box centre (where no particle can be) before
    anything is written."""
    box, apix = sim_small["box"], sim_small["apix"]
    corners = write_map(world / "in/corners48.mrc", (_radius_px(box) > box / 2 + 0.5).astype(np.float32), apix)
    star = sim_small["perturbed_star"]
    for verb in ("refine", "reconstruct"):
        refused(world, capsys, verb, ["--particles", star, "--mask", corners, "--out", world / "o"],
                corners, "--mask", "outside the sphere a particle can occupy", "radius 24 px")
    assert not (world / "o").exists()


@pytest.fixture
def off_density_mask(sim_small, tmp_path):
    """A mask inside the particle sphere that misses the density of sim_small's half maps at the
    input poses: the sphere less the automatic mask of those maps (grown by 1 px)."""
    from scipy import ndimage

    from gmmcore.io.star import read_star
    from gmmcore.masks import auto_fsc_mask, particle_sphere
    from gmmcore.reconstruct import reconstruct_halves

    box, apix = sim_small["box"], sim_small["apix"]
    halves = reconstruct_halves(read_star(sim_small["perturbed_star"]))
    density = ndimage.binary_dilation(auto_fsc_mask(halves[1], halves[2], apix) >= 0.5)
    m = (particle_sphere(box) & ~density).astype(np.float32)
    assert m.sum() >= 125, "sim_small's density fills its particle sphere: no test mask off the density"
    return write_map(tmp_path / "off_density.mrc", m, apix)


@pytest.mark.parametrize("verb", ["refine", "reconstruct"])
def test_mask_off_the_density_refused_then_corrected_on_the_same_out(sim_small, tmp_path, capsys, verb,
                                                                      off_density_mask):
    """refine (once iteration 0 has the half maps at the input poses) and reconstruct (once it has
    its half maps) refuse a mask that does not overlap the density, leaving nothing in --out: the
    corrected command then runs on the same --out."""
    from gmmcore.masks import soft_sphere_mask

    out = tmp_path / "out"
    extra = ["--cpu", "--iter", "0"] if verb == "refine" else []
    args = ["--particles", sim_small["perturbed_star"], "--out", out, *extra]
    rc, err, _ = run_verb(capsys, verb, *args, "--mask", off_density_mask)
    assert_one_error(rc, err, off_density_mask, "--mask", "does not overlap the particle's density", verb=verb)
    assert not out.exists()
    good = write_map(tmp_path / "good.mrc", soft_sphere_mask(sim_small["box"], 18), sim_small["apix"])
    rc, err, _ = run_verb(capsys, verb, *args, "--mask", good)
    assert rc == 0, err
    assert (out / "summary.json").is_file()
