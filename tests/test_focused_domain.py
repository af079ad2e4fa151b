"""Focused and patch-by-patch refinement on a particle whose domain moves (known truth).

The particle: two adenylate kinases side by side (``--copies C2``); the second one swings rigidly
about its interface with the first by a per-particle angle uniform in ±20° (``--domain copy:2``).
600 particles, box 56, 1.7 Å/px, SNR 1.5, poses perturbed by 2° / 0.5 px.  From a 1-iteration
global refinement, which aligns to a compromise of the two bodies:

* focused refinement (2 iterations, mask = the moving copy's ``domain_mask.mrc``): the poses get
  closer to the moving copy's true poses (mean error ≤ 0.82× the global one) and the standard
  reconstruction from them is clearly better inside the moving domain's mask: its FSC against
  the true map there reaches FSC 0.5 at a ≥ 7 % finer resolution; the gold-standard half-map
  FSC inside that mask does not get worse (≤ +0.1 Å at 0.143);
* patch-by-patch refinement (2 patches, 1 iteration each, the default tight patches): the
  composite is at least as good as the global map globally (gold-standard masked FSC 0.143 no
  worse than +0.05 Å) and better inside the moving domain (FSC against the truth at 0.5 ≥ 2.5 %
  finer; the half-map FSC there within +0.15 Å).

Margins from the spread over simulation seeds 0–4 (``benchmarks/seed_spread.py --suite
focused-domain``; 2026-12-06, tight patches), per seed 0..4: focused/global pose error 0.70 0.70
0.72 0.63 0.74; focused/global FSC-vs-truth 0.5 resolution 0.86 0.87 0.82 0.89 0.84;
composite/global 0.93 0.94 0.91 0.90 0.95 (spheres, before: 0.95 0.94 0.92 0.90 0.94); half-map
0.143 change focused −0.30 −0.10 −0.19 −0.05 +0.02 Å, composite +0.01 +0.01 −0.07 −0.04 +0.06 Å
(mean −0.01, s.d. 0.05: the tolerance is mean + 3 s.d.; spheres −0.03 −0.30 −0.01 −0.09 −0.02);
composite − global resolution −0.06 −0.03 −0.02 −0.13 −0.05 Å.  A required improvement is the
original one where the spread supports it, else max(half the smallest gap, mean − 3 sd); the
"not worse" tolerances stay where no seed came near them.

Why the truth and not only the half maps: at these sizes the gold-standard FSC inside the
domain's mask hardly moves (measured 4.37 → 4.28 Å while the FSC against the truth went 5.75 →
4.67 Å): global refinement blurs the moving domain by the same compromise in both halves, and a
blur both halves share is invisible to their FSC.  Sizes: ≈ 2–3 min of CPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from gmmcore.cli import main

SIM = dict(n_particles=600, box=56, apix=1.7, snr=1.5, copies="C2", domain="copy:2", domain_angle_deg=20.0,
           perturb_angle_deg=2.0, perturb_shift_px=0.5, seed=2)
ARGS = ["--maxres", "5", "--ngauss", "250", "--cpu"]
FOCUS = ["--prior-angle", "6"]


def make_runs(d, seed: int = SIM["seed"]):
    """The simulation (``seed``), its 1-iteration global refinement, the focused and the patch runs
    under folder ``d`` (each skipped if already finished).  Also used by ``benchmarks/seed_spread.py``."""
    from gmmcore.simulate import simulate_dataset

    sim = simulate_dataset(d / "sim", show_progress=False, **dict(SIM, seed=seed))
    runs = [("global", ["refine", "--particles", str(sim["perturbed_star"]), "--iter", "1"]),
            ("focused", ["refine-focused", "--from", str(d / "global"), "--mask", str(sim["domain_mask"]),
                         "--iter", "2", *FOCUS]),
            ("patches", ["refine-patches", "--from", str(d / "global"), "--patches", "2", "--iter", "1", *FOCUS])]
    for name, args in runs:
        if not (d / name / "summary.json").exists():
            assert main([*args, "--out", str(d / name), *ARGS]) == 0
    return sim, d


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("domain"))

def _masked(folder, mask, truth):
    """Inside ``mask``: (half-map FSC resolution at 0.143, resolution where the FSC of the average
    against the true map falls to 0.5) of a run's final half maps."""
    from gmmcore.fsc import fsc, fsc_masked, resolution_at
    from gmmcore.io.maps import read_map

    h1, apix = read_map(folder / "final" / "half1.mrc")
    h2, _ = read_map(folder / "final" / "half2.mrc")
    f, c = fsc_masked(h1, h2, apix, mask)
    _, t = fsc(0.5 * (h1 + h2) * mask, truth * mask, apix)
    return resolution_at(f, c, 0.143), resolution_at(f, t, 0.5)


def _maps(sim):
    from gmmcore.io.maps import read_map

    return read_map(sim["domain_mask"])[0], read_map(sim["true_map"])[0]


def domain_measures(sim, d) -> dict:
    """The quantities the tests assert on: inside the moving domain's mask, the half-map FSC 0.143
    and the FSC-vs-truth 0.5 resolutions (Å) of the global, focused and patch runs, the mean pose
    error against the moving copy's true poses (°), and the global/composite resolutions."""
    from gmmcore.geometry import angular_distance
    from gmmcore.io.star import read_star

    z = np.load(sim["truth"])
    mask, true_map = _maps(sim)
    truth = z["domain_pose_rotations"][:, 1]  # the moving copy's own poses
    out = {}
    for name in ("global", "focused", "patches"):
        half, true = _masked(d / name, mask, true_map)
        out[name] = {"half": half, "true": true}
        if name != "patches":
            out[name]["err"] = float(angular_distance(truth, read_star(d / name / "final" / "particles.star")
                                                      .rotation).mean())
    s = json.loads((d / "patches" / "summary.json").read_text())
    out["patches"].update(start=s["initial"]["resolution"], composite=s["composite"]["resolution"])
    return out


def test_focused_refinement_resolves_the_moving_domain(runs):
    sim, d = runs
    m = domain_measures(sim, d)
    g_half, g_true, err_g = m["global"]["half"], m["global"]["true"], m["global"]["err"]
    f_half, f_true, err_f = m["focused"]["half"], m["focused"]["true"], m["focused"]["err"]
    s = json.loads((d / "focused" / "summary.json").read_text())
    # the run's own report (standard reconstruction from the focused poses, within its focus mask)
    assert s["final"]["resolution_focus"] == pytest.approx(f_half, abs=1e-6)
    assert s["final"]["resolution_focus_initial"] == pytest.approx(g_half, abs=1e-6)
    print(f"\nmoving domain: vs truth (FSC 0.5) {g_true:.2f} -> {f_true:.2f} Å, half maps (FSC 0.143) "
          f"{g_half:.2f} -> {f_half:.2f} Å; pose error vs the domain's truth {err_g:.2f} -> {err_f:.2f}°")
    assert err_f <= 0.82 * err_g, (err_g, err_f)
    assert f_true <= 0.93 * g_true, (g_true, f_true)
    assert f_half <= g_half + 0.1, (g_half, f_half)


def test_composite_better_in_the_domain_and_as_good_globally(runs):
    sim, d = runs
    m = domain_measures(sim, d)
    s = json.loads((d / "patches" / "summary.json").read_text())
    start, comp = m["patches"]["start"], m["patches"]["composite"]
    g_half, g_true = m["global"]["half"], m["global"]["true"]
    c_half, c_true = m["patches"]["half"], m["patches"]["true"]
    print(f"\nglobal {start:.2f} Å -> composite {comp:.2f} Å; moving domain vs truth (FSC 0.5) {g_true:.2f} -> "
          f"{c_true:.2f} Å, half maps {g_half:.2f} -> {c_half:.2f} Å")
    assert s["initial"]["resolution"] == pytest.approx(json.loads((d / "global" / "summary.json").read_text())
                                                       ["final"]["resolution"], abs=1e-6)
    assert comp <= start + 0.05, (start, comp)
    assert c_true <= 0.975 * g_true, (g_true, c_true)
    assert c_half <= g_half + 0.15, (g_half, c_half)  # measured −0.07 … +0.06 Å (docstring)
