"""The refinement loop over explicit state (gmmcore.refine.loop / state / rundir).

* ``test_run_dir_of_previous_version_continues``: a run directory written by gmmcore 0.1.0 before
  the loop was restructured (tests/data/run_v0.1.0, killed during iteration 2) continues with
  this code: iteration 1 and the saved iteration-2 GMMs and chunks are reused untouched, and the
  result equals the old code's uninterrupted run — the reused chunks bit for bit, the one chunk
  realigned to float precision (the alignment kernel has been rewritten since: same maths, other
  summation order), the same resolution.
* ``test_shape_gmm_applied_on_fresh_and_resumed_iteration``: a ``shape_gmm`` hook (here: every
  Gaussian twice as wide) changes alignment against the identity hook; after a kill that left the
  fitted GMMs on disk, the resumed iteration applies the hook to the *loaded* GMMs and gives
  exactly the uninterrupted result; the hook's output is never saved.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gmmcore.cli import main

FIXTURE = Path(__file__).parent / "data" / "run_v0.1.0"
OLD_ARGS = ["--iter", "2", "--maxres", "12", "--steps", "3", "--chunk", "40", "--cpu"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("GMMCORE_NO_PROGRESS", "1")
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def _mtimes(folder: Path):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_dir_of_previous_version_continues(tmp_path, capsys):
    work = tmp_path / "fixture"
    shutil.copytree(FIXTURE, work)
    star = work / "sim" / "particles_perturbed.star"
    run = work / "run"
    params = json.loads((run / "params.json").read_text())
    params["particles"] = str(star.resolve())  # the old run named the particles where they were then
    (run / "params.json").write_text(json.dumps(params))
    kept = {**_mtimes(run / "iter000"), **_mtimes(run / "iter001")}
    kept.update({p: t for p, t in _mtimes(run / "iter002").items()})  # GMMs, ring weights, 3 chunks

    assert main(["refine", "--particles", str(star), "--out", str(run), *OLD_ARGS]) == 0
    out = capsys.readouterr().out
    assert "iteration 1 already complete" in out
    # options added since keep the behaviour the run was made with (recorded, and said in the log)
    recorded = json.loads((run / "params.json").read_text())
    assert (recorded["gmm_local_res"], recorded["band_rule"]) == ("off", "fsc0143")
    assert "this run was made before --gmm-local-res existed: it keeps off" in (run / "run.log").read_text()

    # nothing the old run had finished was recomputed or rewritten
    now = _mtimes(run)
    assert {p: now[p] for p in kept} == kept

    assert (run / "iter002" / "align_half2_chunk0001.npz").exists()  # the chunk in flight, redone
    # the same result as the old code's uninterrupted run
    expected = json.loads((FIXTURE / "expected.json").read_text())
    from gmmcore.geometry import angular_distance

    redone = np.load(run / "iter002" / "align_half2_chunk0001.npz")["rows"]
    with np.load(run / "iter002" / "poses.npz") as a, np.load(FIXTURE / "expected_iter002_poses.npz") as b:
        kept = np.setdiff1d(np.arange(len(a["rotation"])), redone)
        assert np.array_equal(a["rotation"][kept], b["rotation"][kept])
        assert np.array_equal(a["origin"][kept], b["origin"][kept])
        assert angular_distance(a["rotation"][redone], b["rotation"][redone]).max() < 1e-3
        assert np.abs(a["origin"][redone] - b["origin"][redone]).max() < 1e-3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["resolution"] == pytest.approx(expected["resolution_final"], rel=1e-3)
    assert summary["iterations"][1]["fsc"]["masked"] == pytest.approx(expected["fsc_masked_iter002"], abs=1e-3)
    assert [r["iteration"] for r in summary["iterations"]] == [1, 2]


def test_a_placeholder_record_is_a_new_run_not_an_older_one(tmp_path):
    """A folder whose params.json records none of a run's parameters (conformation to pose claims its
    folder so before its focused stage) is a new run: no legacy value is inherited; a record with some of
    them but not a newer option is an older run, which keeps the legacy value."""
    from gmmcore.refine.rundir import RunDir

    identity = ("maxres", "band_rule", "gmm_local_res")
    new = {"maxres": 8.0, "band_rule": "fsc01", "gmm_local_res": "on"}
    fresh = tmp_path / "placeholder"
    fresh.mkdir()
    (fresh / "params.json").write_text(json.dumps({"kind": "conf2pose", "conf2pose": {"mask": "m.mrc"}}))
    run = RunDir.create_or_continue(fresh, new, identity, kind="conf2pose")
    assert run.inherited == {}
    assert json.loads((fresh / "params.json").read_text())["band_rule"] == "fsc01"
    older = tmp_path / "older"
    older.mkdir()
    (older / "params.json").write_text(json.dumps({"kind": "conf2pose", "maxres": 8.0}))
    run = RunDir.create_or_continue(older, new, identity, kind="conf2pose")
    assert run.inherited == {"band_rule": "fsc0143", "gmm_local_res": "off"}


# =============================================================================================

def _widened(h, gmm):
    g = gmm.copy()
    g.sigmas = g.sigmas * 2.0
    return g


@pytest.fixture(scope="module")
def loop_setup(sim_small, tmp_path_factory):
    """Iteration 0 of sim_small and a global plan at a fixed 12 Å band (few steps)."""
    from gmmcore.backend import get_backend
    from gmmcore.refine.state import IterationPlan, follow_fsc

    from tests.helpers import sim_small_start

    folder = tmp_path_factory.mktemp("loop")
    table, begin, align = sim_small_start(sim_small, folder)
    plan = IterationPlan(sym="C1", fsc_mask=begin.fsc_mask, band=follow_fsc(25.0, 2.0, 12.0),
                         align=align, prior=table.poses, ngauss=40)
    return table, begin.state, plan, get_backend(), folder


def test_shape_gmm_applied_on_fresh_and_resumed_iteration(loop_setup):
    from gmmcore.refine import loop
    from gmmcore.refine.rundir import RunDir

    table, state, plan, backend, folder = loop_setup
    wide_plan = replace(plan, shape_gmm=_widened)
    plain, rec_plain = loop.iterate(table, state, plan, backend, RunDir(folder / "plain").iteration(1))
    wide, rec_wide = loop.iterate(table, state, wide_plan, backend, RunDir(folder / "wide").iteration(1))

    # the fitted (saved) GMMs do not depend on the hook: it is never saved
    for h in (1, 2):
        a = np.load(folder / "plain" / "iter001" / f"gmm_half{h}.gmm.npz")
        b = np.load(folder / "wide" / "iter001" / f"gmm_half{h}.gmm.npz")
        assert np.array_equal(a["sigmas"], b["sigmas"]) and np.array_equal(a["centers"], b["centers"])
        assert np.array_equal(wide.gmms[h].sigmas, plain.gmms[h].sigmas)
    # ... but alignment used the shaped GMMs
    for h in ("1", "2"):
        assert abs(rec_wide.frc["before"][h] - rec_plain.frc["before"][h]) > 1e-3, (rec_wide.frc, rec_plain.frc)
    assert not np.array_equal(wide.poses.rotation, plain.poses.rotation)

    # kill after the GMM fits: only the fitted GMMs (and their reports) survive
    resumed_dir = folder / "resumed" / "iter001"
    resumed_dir.mkdir(parents=True)
    for f in (folder / "wide" / "iter001").glob("gmm_half*"):
        shutil.copy2(f, resumed_dir / f.name)
    gmm_mtimes = _mtimes(resumed_dir)
    again, rec_again = loop.iterate(table, state, wide_plan, backend, RunDir(folder / "resumed").iteration(1))
    assert _mtimes(resumed_dir.parent).items() >= gmm_mtimes.items()  # loaded, not refitted
    assert rec_again.frc == rec_wide.frc
    assert np.array_equal(again.poses.rotation, wide.poses.rotation)
    assert np.array_equal(again.poses.origin_A, wide.poses.origin_A)
    assert rec_again.resolution == rec_wide.resolution


def test_band_rule_fsc01_aligns_finer_than_the_fsc0143_point(loop_setup):
    """--band-rule fsc01: the band follows 0.9 × where the masked FSC of the state's half maps falls
    below 0.1 — computed here independently from the same maps and mask — which lies at a finer
    resolution than the state's FSC-0.143 one; the default rule is that FSC-0.143 resolution."""
    from gmmcore.fsc import fsc_masked, resolution_at
    from gmmcore.refine.state import band_source, follow_fsc

    table, state, plan, _, _ = loop_setup
    apix = 2.0
    freq, curve = fsc_masked(state.half_maps[1], state.half_maps[2], apix, plan.fsc_mask)
    expected = 0.9 * resolution_at(freq, curve, 0.1)
    src = band_source("fsc01", plan.fsc_mask, apix)
    assert src(state) == pytest.approx(expected)
    assert expected < state.resolution_A  # finer than the 0.143 point
    wide = replace(plan, band=follow_fsc(25.0, apix), band_source=src)
    assert wide.band_of(state).resolution_A == pytest.approx(max(expected, 2.0 * apix * 1.05))
    assert replace(plan, band=follow_fsc(25.0, apix)).band_of(state).resolution_A == pytest.approx(state.resolution_A)
    with pytest.raises(ValueError):
        band_source("fsc05", plan.fsc_mask, apix)


def test_align_from_prior_starts_each_search_at_the_prior_centre(loop_setup):
    """--align-from prior: an iteration's local search starts at the prior centre, not at the
    state's poses.  The state's poses are moved 20° away and the search may move at most ~0.1°
    (one tiny step), so each result lies next to where its search started."""
    from gmmcore.backend import PoseSettings
    from gmmcore.geometry import angular_distance, perturb_rotations
    from gmmcore.particles import Poses
    from gmmcore.refine import loop
    from gmmcore.refine.rundir import RunDir

    table, state, plan, backend, folder = loop_setup
    far = Poses(perturb_rotations(state.poses.rotation, 20.0, np.random.default_rng(0)), state.poses.origin_A)
    moved = replace(state, poses=far)
    tiny = replace(plan.align, pose=PoseSettings(steps=1, lr_angle_deg=0.1, lr_shift_px=0.01,
                                                 prior_angle_deg=3.0, prior_shift_px=1.0))
    for rule, centre in (("previous", far), ("prior", plan.prior)):
        new, _ = loop.iterate(table, moved, replace(plan, align=tiny, align_from=rule), backend,
                              RunDir(folder / f"from_{rule}").iteration(1))
        assert angular_distance(new.poses.rotation, centre.rotation).max() < 0.5, rule


def test_drop_worst_leaves_the_lowest_scoring_particles_out_of_the_half_maps(loop_setup):
    """--drop-worst f: each half map is made from that half's particles except the fraction f with
    the lowest alignment score — the same maps as reconstructing exactly those rows — while every
    particle keeps its refined pose."""
    from gmmcore.particles import HalfPair
    from gmmcore.reconstruct import reconstruct_halves
    from gmmcore.refine import loop
    from gmmcore.refine.loop import best_scoring
    from gmmcore.refine.rundir import RunDir

    table, state, plan, backend, folder = loop_setup

    class Scored:
        def __init__(self, score):
            self.score = score

    rows = table.half_rows()
    scores = HalfPair(*(Scored(np.arange(len(rows[h]), dtype=np.float32)[::-1].copy()) for h in (1, 2)))
    kept = best_scoring(rows, scores, 0.25)
    for h in (1, 2):
        n = len(rows[h])
        assert np.isin(rows[h][: n - n // 4 - 1], kept).all() and not np.isin(rows[h][-(n // 4):], kept).any()
    assert best_scoring(rows, scores, 0.0) is None

    new, rec = loop.iterate(table, state, replace(plan, drop_worst=0.2), backend, RunDir(folder / "drop").iteration(1))
    assert len(new.poses) == len(table)
    score = {h: np.concatenate([np.load(f)["score"] for f in sorted((folder / "drop" / "iter001").glob(
        f"align_half{h}_chunk*.npz"))]) for h in (1, 2)}  # the chunks' saved scores, in row order
    keep = np.sort(np.concatenate([rows[h][score[h] >= np.quantile(score[h], 0.2)] for h in (1, 2)]))
    assert 0.78 * len(table) <= len(keep) <= 0.82 * len(table)
    ref = reconstruct_halves(table.with_poses(new.poses), sym=plan.sym, pad=plan.pad, indices=keep, workers=1)
    for h in (1, 2):
        np.testing.assert_allclose(new.half_maps[h], ref[h], rtol=1e-5, atol=1e-6 * float(np.abs(ref[h]).max()))


def test_gmm_fit_hermitian_gives_the_same_iteration(loop_setup):
    """--gmm-fit hermitian: each half's GMM transform in the fit comes from its k_z ≥ 0 half (recorded
    in its report); the GMMs, FRC and poses equal the default's to float32 rounding."""
    import json

    from gmmcore.geometry import angular_distance
    from gmmcore.refine import loop
    from gmmcore.refine.rundir import RunDir

    table, state, plan, backend, folder = loop_setup
    four, rec_f = loop.iterate(table, state, plan, backend, RunDir(folder / "fit_fourier").iteration(1))
    herm, rec_h = loop.iterate(table, state, replace(plan, gmm_fit="hermitian"), backend,
                               RunDir(folder / "fit_hermitian").iteration(1))
    for h in (1, 2):
        rep = {m: json.loads((folder / f"fit_{m}" / "iter001" / f"gmm_half{h}.json").read_text())
               for m in ("fourier", "hermitian")}
        assert (rep["fourier"]["hermitian"], rep["hermitian"]["hermitian"]) == (False, True)
        assert abs(rep["hermitian"]["fsc_mean"] - rep["fourier"]["fsc_mean"]) < 1e-4
        assert np.median(np.linalg.norm(herm.gmms[h].centers - four.gmms[h].centers, axis=1)) < 1e-3
        assert abs(rec_h.frc["after"][str(h)] - rec_f.frc["after"][str(h)]) < 1e-4 * abs(rec_f.frc["after"][str(h)])
    assert np.median(angular_distance(herm.poses.rotation, four.poses.rotation)) < 0.01


def test_gmm_local_res_blurs_what_aligns_never_what_is_saved(loop_setup, monkeypatch):
    """--gmm-local-res on: the GMM each half aligns with (what the plan's shape hook receives) is the
    fitted one blurred by the half maps' local resolution (gmm.localwidth: centres and masses kept,
    no Gaussian narrower, some wider), and the saved GMM is the fitted one.  The small simulation's
    local resolution is uniform, so the local-resolution map is made coarser on one side (x > 4 Å)."""
    import gmmcore.localres as localres
    from gmmcore.gmm.localwidth import local_blur_A
    from gmmcore.refine import loop
    from gmmcore.refine.rundir import RunDir

    table, state, plan, backend, folder = loop_setup
    real = localres.local_resolution

    def one_side_coarser(h1, h2, apix, mask=None):
        m = real(h1, h2, apix, mask=mask)
        n = m.shape[0]
        m[:, :, n // 2 + 2:] *= 2.0
        calls.append(m)
        return m

    calls = []
    monkeypatch.setattr(localres, "local_resolution", one_side_coarser)
    seen = {}

    def record(h, g):
        seen[h] = g
        return g

    new, _ = loop.iterate(table, state, replace(plan, shape_gmm=record, gmm_local_res="on"), backend,
                          RunDir(folder / "local_res").iteration(1))
    assert len(calls) == 1  # once per iteration, for both halves
    local = calls[0]
    for h in (1, 2):
        fitted, used = new.gmms[h], seen[h]
        saved = np.load(folder / "local_res" / "iter001" / f"gmm_half{h}.gmm.npz")
        np.testing.assert_array_equal(saved["sigmas"], fitted.sigmas)
        np.testing.assert_array_equal(used.centers, fitted.centers)
        np.testing.assert_array_equal(used.amplitudes, fitted.amplitudes)
        blur = local_blur_A(local, fitted.centers, 2.0, plan.band_of(state).resolution_A)
        np.testing.assert_allclose(used.sigmas, np.sqrt(fitted.sigmas.astype(float) ** 2 + blur ** 2), rtol=1e-6)
        assert (blur > 0).sum() >= 1 and (blur == 0).sum() >= 1


def test_gmm_n_scale_multiplies_the_estimated_number_of_gaussians(loop_setup):
    """--gmm-n-scale 2 reaches each half's seeded GMM: N is the estimate at the band × 2 (the same
    estimate the fit makes: the half map low-passed to the band, seed + h), not the plan's fixed N."""
    from gmmcore.fourier import lowpass
    from gmmcore.gmm.build import estimate_n_gaussians
    from gmmcore.refine import loop
    from gmmcore.refine.rundir import RunDir

    table, state, plan, backend, folder = loop_setup
    scaled = replace(plan, ngauss=None, gmm_n_scale=2.0)
    new, _ = loop.iterate(table, state, scaled, backend, RunDir(folder / "n_scale").iteration(1))
    band = scaled.band_of(state).resolution_A
    for h in (1, 2):
        m = lowpass(state.half_maps[h], 2.0, band)
        n1 = estimate_n_gaussians(m, 2.0, band, seed=scaled.seed + h)
        assert len(new.gmms[h]) == round(2 * n1) != plan.ngauss, (h, len(new.gmms[h]), n1)
