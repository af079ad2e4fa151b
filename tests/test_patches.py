"""Patch-by-patch refinement: patches, gold standard, composite rule, resume (sim_small, tiny runs).

* ``test_patches_gold_standard``: half 2's images swamped by noise — every patch's half-1 poses
  and the composite half 1 are bit-identical, half 2 differs; the patch masks are the same files
  for both halves, and each composite half is exactly Σ M_i·Map_i,h / Σ M_i (global fill) with
  those masks (one set of weights for both halves).
* ``test_patches_resume``: a run killed in the middle of patch 2 (its GMMs saved) continues at
  patch 2 — here through ``--patch 2`` (one worker), after which the composite waits for the
  other patch: patch 1 is not touched, patch 2's GMMs are reused, and the result (poses, composite)
  equals the uninterrupted run's.
"""
from __future__ import annotations

import json
import re
import shutil

import mrcfile
import numpy as np
import pytest

from gmmcore.cli import main

TINY = ["--maxres", "12", "--steps", "4", "--chunk", "50", "--ngauss", "120", "--cpu"]


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_global(sim_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch_global") / "global"
    assert main(["refine", "--particles", str(sim_small["perturbed_star"]), "--iter", "1", "--out", str(out),
                 *TINY]) == 0
    return out


def _corrupt_global(sim, global_dir, folder):
    """A copy of the global run whose particles point at a stack with half 2 swamped by noise."""
    folder.mkdir(parents=True)
    with mrcfile.open(sim["stack"], permissive=True) as m:
        imgs = np.array(m.data, dtype=np.float32)
    h2 = np.asarray(sim["half"]) == 2
    imgs[h2] += np.random.default_rng(9).normal(0.0, float(imgs.std()), imgs[h2].shape).astype(np.float32)
    with mrcfile.new(folder / "particles.mrcs", overwrite=True) as m:
        m.set_data(imgs)
        m.set_image_stack()
        m.voxel_size = sim["apix"]
    shutil.copy(sim["perturbed_star"], folder / "particles_perturbed.star")
    run = folder / "global"
    shutil.copytree(global_dir, run)
    # the final star names its images with absolute paths: point them at the corrupted stack
    star = run / "final" / "particles.star"
    star.write_text(star.read_text().replace(str(sim["stack"].resolve()), str((folder / "particles.mrcs").resolve())))
    for name in ("params.json", "summary.json"):  # the run's particles: images resolved next to them
        data = json.loads((run / name).read_text())
        (data if name == "params.json" else data["params"])["particles"] = str(folder / "particles_perturbed.star")
        (run / name).write_text(json.dumps(data))
    return run


def _patches(source, out, *extra):
    return main(["refine-patches", "--from", str(source), "--patches", "2", "--iter", "1", "--out", str(out),
                 *TINY, *extra])


@pytest.fixture(scope="module")
def clean_patches(tiny_global):
    out = tiny_global.parent / "clean"
    assert _patches(tiny_global, out) == 0
    return out


def test_patches_gold_standard(sim_small, tiny_global, clean_patches, tmp_path):
    from gmmcore.composite import composite
    from gmmcore.io.maps import read_map
    from gmmcore.particles import Poses

    bad_global = _corrupt_global(sim_small, tiny_global, tmp_path / "corrupt")
    assert _patches(bad_global, tmp_path / "bad") == 0
    a, b = clean_patches, tmp_path / "bad"
    summary = json.loads((a / "summary.json").read_text())
    assert summary["kind"] == "patches" and len(summary["patches"]) == 2
    assert summary["final"]["particles"] is None and summary["composite"]["resolution"] > 0
    half = np.asarray(sim_small["half"])
    for rec in summary["patches"]:
        assert rec["complete"] and (a / rec["particles"]).is_file()
        # the same patches from the same start, and one mask per patch for both halves
        ma = mrcfile.read(a / rec["mask"])
        assert np.array_equal(ma, mrcfile.read(b / rec["mask"]))
        assert np.array_equal(ma, mrcfile.read(a / rec["dir"] / "focus_mask.mrc"))
        pa, pb = Poses.load(a / rec["dir"] / "iter001" / "poses.npz"), Poses.load(b / rec["dir"] / "iter001" / "poses.npz")
        for h in (1, 2):
            s = half == h
            same = np.array_equal(pa.rotation[s], pb.rotation[s]) and np.array_equal(pa.origin_A[s], pb.origin_A[s])
            assert same == (h == 1), f"patch {rec['index']} half {h}: poses {'differ' if h == 1 else 'identical'}"
    assert np.array_equal(mrcfile.read(a / "final" / "half1.mrc"), mrcfile.read(b / "final" / "half1.mrc"))
    assert not np.array_equal(mrcfile.read(a / "final" / "half2.mrc"), mrcfile.read(b / "final" / "half2.mrc"))
    # each composite half: the stated rule with the same masks, the start's half map filling
    masks = [read_map(a / rec["mask"])[0] for rec in summary["patches"]]
    for h in (1, 2):
        maps = [read_map(a / rec["dir"] / "final" / f"half{h}.mrc")[0] for rec in summary["patches"]]
        expect, W = composite(list(zip(masks, maps)), read_map(tiny_global / "final" / f"half{h}.mrc")[0])
        np.testing.assert_allclose(read_map(a / "final" / f"half{h}.mrc")[0], expect, atol=1e-5)
    assert np.array_equal(read_map(a / "final" / "weights.mrc")[0], W)
    info = json.loads((a / "patches.json").read_text())
    assert sum(p["n_gaussians"] for p in info["patches"]) == len(info["labels"]["1"]) + len(info["labels"]["2"])


def test_patches_resume(tiny_global, clean_patches, tmp_path, capsys):
    ref = clean_patches
    out = tmp_path / "resumed"
    shutil.copytree(ref, out)
    p2 = out / "patch_02"
    it = p2 / "iter001"
    # killed while aligning patch 2: its GMMs were saved, nothing after
    for f in list(it.glob("align_*")) + [it / "poses.npz", it / "report.json", it / "half1.mrc", it / "half2.mrc",
                                         p2 / "summary.json", out / "summary.json"]:
        f.unlink()
    for d in (p2 / "final", out / "final"):
        shutil.rmtree(d)
    patch1 = _mtimes(out / "patch_01")
    gmms = _mtimes(it)  # what survived of patch 2: the fitted GMMs and their reports
    assert {f.name for f in gmms} == {"gmm_half1.gmm.npz", "gmm_half1.json", "gmm_half2.gmm.npz", "gmm_half2.json"}
    capsys.readouterr()
    # a worker continues patch 2 alone (--patch 2): patch 1 untouched, patch 2's GMMs reused, no composite yet
    (out / "patch_01" / "summary.json").rename(out / "patch_01" / "summary.hidden")  # as if patch 1 ran elsewhere
    assert _patches(tiny_global, out, "--patch", "2") == 0
    assert "1 of 2 patches finished" in capsys.readouterr().out and not (out / "final").exists()
    (out / "patch_01" / "summary.hidden").rename(out / "patch_01" / "summary.json")
    assert {p: t for p, t in _mtimes(it).items() if p in gmms} == gmms
    # then the whole command: both patches already complete, the composite is made
    assert _patches(tiny_global, out) == 0
    stdout = capsys.readouterr().out
    assert "patch 1 already complete" in stdout and "patch 2 already complete" in stdout
    assert _mtimes(out / "patch_01") == patch1
    for k in (1, 2):
        with np.load(ref / f"patch_{k:02d}" / "iter001" / "poses.npz") as x, \
                np.load(out / f"patch_{k:02d}" / "iter001" / "poses.npz") as y:
            assert np.array_equal(x["rotation"], y["rotation"]) and np.array_equal(x["origin"], y["origin"]), k
    for h in (1, 2):
        assert np.array_equal(mrcfile.read(ref / "final" / f"half{h}.mrc"), mrcfile.read(out / "final" / f"half{h}.mrc"))
    a, b = json.loads((ref / "summary.json").read_text()), json.loads((out / "summary.json").read_text())
    assert a["composite"]["fsc"] == b["composite"]["fsc"]
    # other defining parameters into the same folder: one line naming them
    capsys.readouterr()
    rc = main(["refine-patches", "--from", str(tiny_global), "--patches", "3", "--iter", "1", "--out", str(out), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "patches" in err and "Traceback" not in err, err


def test_patches_on_two_workers(tiny_global, clean_patches, tmp_path):
    """--workers 2: one unit per patch on two Dask worker processes (as --gpu 0,1 would on two GPUs)
    gives the in-process result — every patch's poses and both composite halves — and the log
    names the worker of each patch."""
    pytest.importorskip("distributed")
    from gmmcore.geometry import angular_distance

    out = tmp_path / "workers"
    assert _patches(tiny_global, out, "--workers", "2") == 0
    for k in (1, 2):
        d = f"patch_{k:02d}/iter001/poses.npz"
        with np.load(clean_patches / d) as a, np.load(out / d) as b:
            assert angular_distance(a["rotation"], b["rotation"]).max() <= 1e-5
            assert np.abs(a["origin"] - b["origin"]).max() <= 1e-5
    for h in (1, 2):
        a, b = mrcfile.read(clean_patches / "final" / f"half{h}.mrc"), mrcfile.read(out / "final" / f"half{h}.mrc")
        assert np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1] > 0.99999
    log = (out / "run.log").read_text()
    assert "patch(es) on local Dask cluster: 2 CPU worker process(es)" in log, log
    assert len(re.findall(r"patch \d: .* within its mask \(\S+, ", log)) == 2, log


def test_patches_fsc_mask_is_checked(tiny_global, tmp_path, capsys):
    """--fsc-mask goes through the one mask check (masks.check_mask), as every user mask: a map
    that is not a 0..1 mask is refused before anything is written."""
    from tests.helpers import assert_one_error, run_verb

    bad = tmp_path / "not_a_mask.mrc"
    with mrcfile.new(str(bad)) as m:
        m.set_data(np.full((48,) * 3, 3.0, np.float32))
        m.voxel_size = 2.0
    out = tmp_path / "p"
    rc, err, _ = run_verb(capsys, "refine-patches", "--from", tiny_global, "--patches", "2", "--iter", "1",
                          "--out", out, "--fsc-mask", bad, *TINY)
    assert_one_error(rc, err, "not_a_mask.mrc", "--fsc-mask", "between 0 and 1", verb="refine-patches")
    assert not out.exists()


def test_tight_patch_masks_tile_the_particle(tiny_global):
    """``--patch-shape tight``: the particle's density is shared out by nearest Gaussian — the
    masks sum to ≥ 1 wherever the density is, every Gaussian inside the density is at 1 in its own
    patch's mask, a patch's mask is 0 at a Gaussian of another patch whose distance to the patch's
    Gaussians (both halves) is more than twice dilation + fall-off (its half-way Voronoi boundary
    lies beyond them), and each holds less of the particle than its sphere."""
    from scipy.spatial import cKDTree

    from gmmcore.masks import auto_mask, values_at
    from gmmcore.refine.patches import TIGHT_DILATE_PX, define_patches, patch_mask, tight_patch_masks
    from gmmcore.refine.start import start_from_run

    table, start, *_ = start_from_run(str(tiny_global))
    apix, box, k, falloff = 2.0, start.half_maps[1].shape[0], 3, 2.0  # a narrow edge: the particle is small
    patches, labels = define_patches(start.gmms, k, box, apix, falloff)
    density = 0.5 * (start.half_maps[1] + start.half_maps[2])
    tight = tight_patch_masks(start.gmms, labels, k, density, apix, falloff)
    spheres = [patch_mask(p, box, apix, falloff) for p in patches]
    support = auto_mask(density, apix, dilate_px=0.0, edge_px=0.0) > 0.5
    assert support.sum() > 100
    assert np.sum(tight, axis=0)[support].min() >= 0.999
    positive = np.clip(density, 0, None) * support
    pts = np.concatenate([g.centers for _, g in start.gmms.items()])
    lab = np.concatenate([labels[str(h)] for h, _ in start.gmms.items()]) - 1
    inside = values_at(support.astype(np.float32), pts, apix) > 0.999
    for i in range(k):
        own = values_at(tight[i], pts[(lab == i) & inside], apix)
        assert own.min() > 0.999, (i, own.min())
        far = cKDTree(pts[lab == i]).query(pts[lab != i])[0] > 2 * (TIGHT_DILATE_PX + falloff + 1) * apix
        assert far.any() and np.abs(values_at(tight[i], pts[lab != i][far], apix)).max() < 1e-6
    for i in range(k):
        assert (tight[i] * positive).sum() < (spheres[i] * positive).sum(), i
        # every Gaussian lies inside (M = 1) the sphere of its own patch (the farthest member sits
        # on the radius, where the trilinear value over a 2-px edge is ≈ 0.94)
        assert values_at(spheres[i], pts[lab == i], apix).min() > 0.9, i


def test_patch_shape_is_part_of_the_run(tiny_global, clean_patches, capsys):
    """A finished run continued with the other ``--patch-shape`` is refused (a new --out is
    needed), naming the parameter; its patches.json records the shape it was made with."""
    from gmmcore import defaults

    assert json.loads((clean_patches / "patches.json").read_text())["shape"] == defaults.PATCH_SHAPE
    other = next(s for s in defaults.PATCH_SHAPES if s != defaults.PATCH_SHAPE)
    assert _patches(tiny_global, clean_patches, "--patch-shape", other) != 0
    assert "patch_shape" in capsys.readouterr().err


def test_a_patch_without_density_is_refused_before_anything_is_written(tiny_global, tmp_path, capsys):
    """Tight patches: a patch count whose K-means leaves a patch with none of the particle's density
    (a cluster of Gaussians outside it) is refused naming --patches, before the output folder is
    made; the corrected command then runs in the same --out."""
    from gmmcore.errors import InputError
    from gmmcore.refine.patches import define_patches, tight_patch_masks
    from gmmcore.refine.start import start_from_run

    _, start, *_ = start_from_run(str(tiny_global))
    density = 0.5 * (start.half_maps[1] + start.half_maps[2])
    box = density.shape[0]

    def refused(k):
        labels = define_patches(start.gmms, k, box, 2.0)[1]
        try:
            tight_patch_masks(start.gmms, labels, k, density, 2.0, 5.0)
        except InputError:
            return True
        return False

    k = next((k for k in range(8, 121, 8) if refused(k)), None)
    assert k is not None, "no patch count up to 120 leaves a patch outside the density"
    out = tmp_path / "patches"
    assert _patches(tiny_global, out, "--patches", str(k)) != 0
    err = capsys.readouterr().err
    assert "--patches" in err and "none of the particle's density" in err, err
    assert not (out / "params.json").exists() and not (out / "masks").exists()
    assert _patches(tiny_global, out) == 0  # the helper's 2 patches (a later --patches overrides them)
    assert json.loads((out / "patches.json").read_text())["k"] == 2
