"""Focused refinement: the width mask, proof that it is applied (fresh and resumed), gold standard.

* ``test_width_mask_values``: a Gaussian centred where M = 0 gets exactly 4× its width, M = 1
  keeps it, M = 0.5 gets σ/0.625; amplitudes and centres unchanged; trilinear sampling between
  voxels; nothing compounds (the hook returns a new GMM from the raw one every time).
* ``test_focus_changes_alignment_and_survives_resume``: on the same start (sim_small), one
  focused iteration with a mask on part of the particle moves the poses differently from the
  same iteration with an all-ones mask (= no focus) although both fitted the identical GMMs (the
  difference is the shaping alone); the saved GMMs are the raw fits; a run killed after its GMMs
  were saved resumes to bit-identical poses — so the focus is applied on the resume path too
  (dropping it there would reproduce the unfocused poses, and the test would fail).
* ``test_focused_gold_standard``: corrupting half 2's images leaves half 1's focused results
  (GMM, poses) bit-identical, while half 2's change.
* ``test_refine_focused_cli``: the verb from a run directory, its outputs and one-line errors.
"""
from __future__ import annotations

import json
import shutil

import mrcfile
import numpy as np
import pytest

from gmmcore.cli import main
from gmmcore.geometry import angular_distance
from gmmcore.gmm.focus import widen, widen_outside, width_factors
from gmmcore.gmm.model import GMM
from gmmcore.io.star import read_star
from gmmcore.masks import soft_sphere_mask

# tiny and fast: the band is pinned (--maxres coarser than the data's resolution), few steps
FOCUS_KW = dict(iterations=1, maxres=12.0, steps=5, chunk=50, cpu=True, ngauss=120)


def test_width_mask_values():
    box, apix = 32, 2.0
    mask = np.zeros((box,) * 3, np.float32)
    mask[:, :, 17:] = 1.0
    mask[:, :, 16] = 0.5
    # centres (x, y, z) Å from the box centre (index 16): x = 2 → voxel 17 (M 1); x = 0 → 16 (M 0.5);
    # x = −10 → voxel 11 (M 0); x = 1 → voxel 16.5 (trilinear: M 0.75); x = 60 → outside the box (M 0)
    g = GMM([[2, 3, 1], [0, -4, 2], [-10, 0, 0], [1, 0, 0], [60, 0, 0]], [1, 2, 3, 4, 5], [1.5, 2.0, 1.0, 1.2, 1.1])
    out = widen(g, mask, apix, rule="sigma")  # the paper's text: σ' = σ/(0.25 + 0.75·M)
    np.testing.assert_allclose(width_factors(mask, g.centers, apix, rule="sigma"),
                               [1.0, 1 / 0.625, 4.0, 1 / 0.8125, 4.0])
    assert out.sigmas[0] == g.sigmas[0]  # inside: unchanged, exactly
    assert out.sigmas[1] == np.float32(2.0 / 0.625)
    assert out.sigmas[2] == np.float32(4.0)  # exactly 4x
    np.testing.assert_allclose(out.sigmas[3], 1.2 / 0.8125, rtol=1e-6)
    assert out.sigmas[4] == np.float32(4.4)
    assert np.array_equal(out.centers, g.centers) and np.array_equal(out.amplitudes, g.amplitudes)
    assert np.array_equal(g.sigmas, np.float32([1.5, 2.0, 1.0, 1.2, 1.1]))  # the input is not modified
    # the default, the reference code's rule: σ'² = σ²/(0.25 + 0.75·M) — at most 2× wider
    var = widen(g, mask, apix)
    np.testing.assert_allclose(width_factors(mask, g.centers, apix),
                               [1.0, 1 / np.sqrt(0.625), 2.0, 1 / np.sqrt(0.8125), 2.0])
    assert var.sigmas[0] == g.sigmas[0] and var.sigmas[2] == np.float32(2.0)
    np.testing.assert_allclose(var.sigmas.astype(np.float64) ** 2,
                               g.sigmas.astype(np.float64) ** 2 / np.array([1, 0.625, 0.25, 0.8125, 0.25]),
                               rtol=1e-6)
    # another mask level: L = 0.5 → at most √2 (variance) / 2 (sigma)
    np.testing.assert_allclose(width_factors(mask, g.centers, apix, level=0.5)[[0, 2]], [1.0, np.sqrt(2.0)])
    np.testing.assert_allclose(width_factors(mask, g.centers, apix, level=0.5, rule="sigma")[[0, 2]], [1.0, 2.0])
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            width_factors(mask, g.centers, apix, level=bad)
    # the hook: same mask for both halves, never compounding (applied to the raw GMM each time)
    hook = widen_outside(mask, apix)
    once = hook(1, g)
    again = hook(2, g)
    assert np.array_equal(once.sigmas, again.sigmas) and np.array_equal(once.sigmas, var.sigmas)
    assert once.meta["focus"]["widened"] == 4 and once.meta["focus"]["rule"] == "variance"
    paper = widen_outside(mask, apix, rule="sigma")(1, g)
    assert np.array_equal(paper.sigmas, out.sigmas)


# ---------------------------------------------------------------------------------------------
# runs on sim_small (400 particles, box 48, 2 Å/px, SNR 0.1)


@pytest.fixture(scope="module")
def start(sim_small):
    """(table at the perturbed poses, start state with its half maps) and a focus mask on one
    side of the particle."""
    from gmmcore.refine.focused import start_from_maps
    from gmmcore.reconstruct import reconstruct_halves
    from gmmcore.io.maps import write_map

    table = read_star(sim_small["perturbed_star"])
    maps = reconstruct_halves(table, workers=1)
    d = sim_small["out_dir"].parent / "focus_start"
    d.mkdir(exist_ok=True)
    for h, m in maps.items():
        write_map(d / f"half{h}.mrc", m, sim_small["apix"])
    state, fsc_mask = start_from_maps(table, d / "half1.mrc", d / "half2.mrc")
    mask = soft_sphere_mask(48, 6, 3, center=(24, 24, 30))  # off-centre: part of the particle
    return table, state, fsc_mask, mask, d


def _focused(table, state, mask, fsc_mask, out):
    from gmmcore.refine.focused import FocusedParams, refine_focused

    return refine_focused(table, state, mask, FocusedParams(out=str(out), **FOCUS_KW), fsc_mask=fsc_mask)


@pytest.fixture(scope="module")
def focus_run(start):
    """One focused iteration on the start (shared by the tests below)."""
    table, state, fsc_mask, mask, d = start
    return _focused(table, state, mask, fsc_mask, d / "focus"), d / "focus"


def test_summary_keeps_the_focus_fsc(focus_run):
    """The run contract round trip: the FSC within the focus mask (the plan's extra report) is in
    the loaded summary's iteration report, as in the summary the run returned."""
    from gmmcore.summary import RunSummary

    summary, out = focus_run
    loaded = RunSummary.load(out / "summary.json")
    a, b = summary.iterations[-1].report, loaded.iterations[-1].report
    assert b.resolution_focus == a.resolution_focus and b.fsc_focus == a.fsc_focus
    assert b.resolution == a.resolution and b.fsc == a.fsc and loaded.iterations[-1].extra == {}


def test_focus_changes_alignment_and_survives_resume(start, focus_run, tmp_path):
    from gmmcore.particles import Poses

    table, state, fsc_mask, mask, _ = start
    s_focus, focus_dir = focus_run
    s_none = _focused(table, state, np.ones_like(mask), fsc_mask, tmp_path / "nofocus")
    it_f, it_n = focus_dir / "iter001", tmp_path / "nofocus" / "iter001"
    # identical raw fits: the shaping is the only difference, and the saved GMMs are not shaped
    for h in (1, 2):
        gf, gn = GMM.load(it_f / f"gmm_half{h}.gmm.npz"), GMM.load(it_n / f"gmm_half{h}.gmm.npz")
        assert np.array_equal(gf.sigmas, gn.sigmas) and np.array_equal(gf.centers, gn.centers)
        f = width_factors(mask, gf.centers, 2.0)  # the default rule: M < 1/9 ⇔ f > √3
        assert (f > 1.73).mean() > 0.3 and (f == 1.0).sum() >= 5  # most Gaussians widened, some kept
    pf, pn = Poses.load(it_f / "poses.npz"), Poses.load(it_n / "poses.npz")
    d = angular_distance(pf.rotation, pn.rotation)
    print(f"\nfocused vs unfocused poses: mean {d.mean():.2f}°, median {np.median(d):.2f}°")
    assert d.mean() > 0.3, d.mean()  # the focus changed the alignment
    rep = json.loads((it_f / "report.json").read_text())
    assert {"resolution_focus", "fsc_focus"} <= set(rep) and len(rep["fsc_focus"]) == 25
    assert s_focus.kind == "focused" and s_focus.final.focus_mask == "focus_mask.mrc"
    assert s_none.final.resolution_focus > 0

    # resume: killed after the GMMs were fitted and saved (alignment, maps, report lost)
    out = tmp_path / "resumed"
    shutil.copytree(focus_dir, out)
    it = out / "iter001"
    for f in list(it.glob("align_*")) + [it / "poses.npz", it / "report.json", it / "half1.mrc", it / "half2.mrc",
                                         out / "summary.json"]:
        f.unlink()
    shutil.rmtree(out / "final")
    gmm_mtime = (it / "gmm_half1.gmm.npz").stat().st_mtime_ns
    _focused(table, state, mask, fsc_mask, out)
    assert (it / "gmm_half1.gmm.npz").stat().st_mtime_ns == gmm_mtime  # loaded, not refitted
    pr = Poses.load(it / "poses.npz")
    assert np.array_equal(pr.rotation, pf.rotation) and np.array_equal(pr.origin_A, pf.origin_A)
    # and the resumed GMM files are still the raw fits
    assert np.array_equal(GMM.load(it / "gmm_half2.gmm.npz").sigmas, GMM.load(it_f / "gmm_half2.gmm.npz").sigmas)


def test_focused_gold_standard(start, focus_run, sim_small, tmp_path):
    """Half 2's images swamped by noise: half 1's GMM and poses do not change by one bit."""
    from gmmcore.particles import Poses

    table, state, fsc_mask, mask, _ = start
    folder = tmp_path / "corrupt"
    folder.mkdir()
    with mrcfile.open(sim_small["stack"], permissive=True) as m:
        imgs = np.array(m.data, dtype=np.float32)
    h2 = np.asarray(sim_small["half"]) == 2
    imgs[h2] += np.random.default_rng(5).normal(0.0, float(imgs.std()), imgs[h2].shape).astype(np.float32)
    with mrcfile.new(folder / "particles.mrcs", overwrite=True) as m:
        m.set_data(imgs)
        m.set_image_stack()
        m.voxel_size = sim_small["apix"]
    bad = table.with_poses(table.poses)
    bad.image_root = str(folder)
    _focused(bad, state, mask, fsc_mask, tmp_path / "bad")
    a, b = focus_run[1] / "iter001", tmp_path / "bad" / "iter001"
    g1a, g1b = GMM.load(a / "gmm_half1.gmm.npz"), GMM.load(b / "gmm_half1.gmm.npz")
    assert np.array_equal(g1a.centers, g1b.centers) and np.array_equal(g1a.sigmas, g1b.sigmas)
    pa, pb = Poses.load(a / "poses.npz"), Poses.load(b / "poses.npz")
    half = np.asarray(table.half)
    for h in (1, 2):
        s = half == h
        same = np.array_equal(pa.rotation[s], pb.rotation[s]) and np.array_equal(pa.origin_A[s], pb.origin_A[s])
        assert same == (h == 1), f"half {h}: poses {'differ' if h == 1 else 'identical'}"
    assert np.array_equal(mrcfile.read(a / "half1.mrc"), mrcfile.read(b / "half1.mrc"))
    assert not np.array_equal(mrcfile.read(a / "half2.mrc"), mrcfile.read(b / "half2.mrc"))


def test_refine_focused_cli(start, sim_small, tmp_path, capsys):
    """From --particles/--half1/--half2 (another program's result): outputs and bad input."""
    from gmmcore.io.maps import write_map

    d = start[4]  # the start's half maps
    mask = tmp_path / "m.mrc"
    write_map(mask, soft_sphere_mask(48, 6, 3, center=(24, 24, 30)), 2.0)
    out = tmp_path / "cli"
    args = ["refine-focused", "--particles", str(sim_small["perturbed_star"]), "--half1", str(d / "half1.mrc"),
            "--half2", str(d / "half2.mrc"), "--mask", str(mask), "--iter", "0", "--out", str(out)]
    assert main(args + ["--gpu", "0", "--batch", "auto", "--threads", "1"]) == 0
    for f in ("final/particles.star", "final/half1.mrc", "final/half2.mrc", "final/map.mrc", "focus_mask.mrc",
              "fsc_mask.mrc", "summary.json"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "focused" and s["final"]["resolution_focus"] == s["initial"]["resolution_focus"]
    assert s["params"]["batch"] == "auto" and s["params"]["threads"] == 1 and s["params"]["backend"] == "tf"
    if "GPU" not in s["device"]:  # a GPU asked for and none seen: said in the summary (the run goes on)
        assert any("GPU 0 requested" in w for w in s.get("warnings", [])), s.get("warnings")
    capsys.readouterr()
    # a mask on another grid, and neither --from nor --particles: one line each, exit 2
    small = tmp_path / "small.mrc"
    write_map(small, np.ones((32,) * 3, np.float32), 2.0)
    for bad in (args[:7] + ["--mask", str(small), "--out", str(tmp_path / "x")],
                ["refine-focused", "--mask", str(mask), "--out", str(tmp_path / "y")],
                args[:-2] + ["--out", str(tmp_path / "z"), "--batch", "0"],
                args[:-2] + ["--out", str(tmp_path / "z"), "--threads", "0"]):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("gmmcore refine-focused: error:"), err
    assert not (tmp_path / "x").exists()
