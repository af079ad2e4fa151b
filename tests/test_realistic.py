"""Slow tier: global refinement on a small REALISTIC set (RELION projections of an atom-model map, CTF,
white noise at SNR 0.1 — benchmarks/realistic/generate.py) must bring the poses nearer the truth.

Also: the pose bound (gmm/precision.py) against the aligner, and the focused mode's warning on a small domain.
Unlike the rest of the suite, the images are not projections of the kind of GMM the aligner uses, so a
regression that only shows on real-like data (such as the focused width rule of issue 17) can fail here.
Skipped when RELION (`relion_project`) is not installed.

Set: ADK closed, 400 particles, box 48 at 2 Å/px, SNR 0.1, start poses ≈ 5° / 1.5 px from the truth
(at 2.4° the start is already below what 400 particles at this SNR can resolve: 2 iterations end at
≈ 3.1° from 2.4° — measured, seeds 1 and 2).  Measured over seeds 1, 2, 3 (2 iterations): mean angular
error 5.04 → 4.57°, 4.91 → 4.56°, 5.06 → 4.60° (drops 0.47, 0.35, 0.45°; mean 0.43, s.d. 0.06); mean
shift error 1.45 → 0.65, 1.46 → 0.64, 1.55 → 0.61 px (drops 0.81–0.94 px).  Margins: 0.2° and 0.5 px.
54–90 s per seed on 2 lightly shared cores (≈ 5 min under heavy sharing).
"""
import shutil

import numpy as np
import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("relion_project") is None,
                                 reason="RELION (relion_project) not installed")]

SMALL = dict(kind="rigid", n=400, seed=1, box=48, apix=2.0, snr=0.1, start_angle_deg=5.0, start_shift_px=1.5)
ITERATIONS = 2
MARGIN_DEG = 0.2  # required drop of the mean angular error (start − refined); measured 0.35–0.47
MARGIN_PX = 0.5  # required drop of the mean shift error; measured 0.81–0.94


def mean_errors(star, set_dir) -> tuple:
    """(mean angular error in degrees, mean shift error in pixels) of a star against truth.npz."""
    from benchmarks.realistic.truth import pose_errors

    err = pose_errors(star, set_dir)
    return float(err["core_deg"].mean()), float(err["shift_px"].mean())


def refine_small(tmp_path, seed: int) -> tuple:
    """Generate the small set, import, refine; → (start errors, refined errors) (degrees, pixels)."""
    from benchmarks.realistic.generate import generate
    from gmmcore.cli import main

    set_dir = tmp_path / f"set{seed}"
    generate(set_dir, **{**SMALL, "seed": seed})
    assert main(["import", "--star", str(set_dir / "particles.star"), "--out", str(tmp_path / f"imp{seed}")]) == 0
    run = tmp_path / f"run{seed}"
    assert main(["refine", "--particles", str(tmp_path / f"imp{seed}" / "particles.star"), "--out", str(run),
                 "--iter", str(ITERATIONS), "--threads", "2"]) == 0
    return mean_errors(set_dir / "particles.star", set_dir), mean_errors(run / "final" / "particles.star", set_dir)


def test_global_refinement_improves_poses_on_realistic_data(tmp_path):
    before, after = refine_small(tmp_path, SMALL["seed"])
    assert before[0] - after[0] >= MARGIN_DEG, (before, after)
    assert before[1] - after[1] >= MARGIN_PX, (before, after)


BOUND_RES_A = 6.0  # band of the bound check (box 48 at 2 Å/px: Nyquist 4 Å)
ALIGN_STEPS = 40
BOUND_RATIO = (1.0, 1.7)  # aligner's mean error / bound: a lower bound, not far below; measured 1.39–1.42 (seeds 1–3)


def bound_and_error(tmp_path, seed: int) -> tuple:
    """(Cramér–Rao bound of the mean angular error, the aligner's mean angular error) in degrees: both
    with a GMM of the set's true map, at the true poses, in the same band; the aligner starts at
    the true poses without a prior, so its error is the noise-limited scatter of its optimum."""
    from benchmarks.realistic.generate import generate
    from gmmcore.backend import PoseSettings, get_backend
    from gmmcore.fourier import lowpass
    from gmmcore.geometry import angular_distance
    from gmmcore.gmm.align import AlignSettings, align_particles
    from gmmcore.gmm.build import build_gmm
    from gmmcore.gmm.precision import pose_precision
    from gmmcore.grids import FourierGrid
    from gmmcore.io.maps import read_map
    from gmmcore.io.star import read_star
    from gmmcore.particles import Poses

    set_dir = tmp_path / f"bound{seed}"
    generate(set_dir, **{**SMALL, "seed": seed})
    table = read_star(set_dir / "particles.star")
    truth = np.load(set_dir / "truth.npz")
    m, apix = read_map(set_dir / "truth_map.mrc")
    be = get_backend("tf")
    gmm, _ = build_gmm(lowpass(m, apix, BOUND_RES_A), apix, BOUND_RES_A, seed=0, backend=be)
    true = Poses(truth["rotations"], truth["origins_A"])
    grid = FourierGrid(m.shape[0], apix, BOUND_RES_A, 25.0)
    rows = np.arange(len(table))
    bound = pose_precision(gmm, table, rows, true, grid, be, n_sample=200)
    # enough steps to reach the objective's optimum (the default 10 × 0.5° cannot move past ≈ 4°)
    pose = PoseSettings(steps=ALIGN_STEPS, lr_angle_deg=1.0, lr_shift_px=0.25)
    res = align_particles(table, true, rows, gmm, grid, AlignSettings(pose=pose), backend=be)
    return bound.angle_deg, float(angular_distance(res.poses.rotation, true.rotation).mean())


def test_pose_bound_matches_the_aligners_noise_limited_error(tmp_path):
    """The bound a focused run warns with is a real limit: on RELION-made particles the aligner's
    scatter about the true poses (no prior, run to its optimum) is never below it and not far above
    (the FRC objective is not the full likelihood, and at this SNR the optimum has heavier tails
    than the bound's Gaussian): 7.9–8.2° against bounds of 5.7–5.8° over seeds 1–3."""
    bound, error = bound_and_error(tmp_path, SMALL["seed"])
    assert BOUND_RATIO[0] <= error / bound <= BOUND_RATIO[1], (bound, error)


FLEX_SMALL = dict(kind="flexible", n=400, seed=5, box=48, apix=2.0, snr=0.1, bins=8, start_angle_deg=5.0,
                  start_shift_px=1.5)


def test_focused_refinement_warns_that_a_small_domain_cannot_be_aligned_alone(tmp_path):
    """The focused mode on realistic data: the moving LID (≈ 20 % of the mass) of RELION-made
    particles at SNR 0.1 carries too little signal to be aligned particle by particle — the
    regime where focused refinement made the domain worse in issue 17.  The run must say so: the
    region's pose bound is well above the whole particle's and above the pose prior, and the
    summary holds the warning.  Measured (seed 5, band 8.1 Å): region ±21.2° (6 of 23 Gaussians),
    whole particle ±5.9°."""
    from benchmarks.realistic.generate import generate
    from gmmcore.cli import main
    from gmmcore.summary import RunSummary

    set_dir = tmp_path / "flex"
    generate(set_dir, **FLEX_SMALL)
    assert main(["import", "--star", str(set_dir / "particles.star"), "--out", str(tmp_path / "imp")]) == 0
    assert main(["refine", "--particles", str(tmp_path / "imp" / "particles.star"), "--out", str(tmp_path / "glob"),
                 "--iter", "1", "--threads", "2"]) == 0
    assert main(["refine-focused", "--from", str(tmp_path / "glob"), "--mask", str(set_dir / "domain_mask.mrc"),
                 "--iter", "1", "--threads", "2", "--out", str(tmp_path / "foc")]) == 0
    s = RunSummary.load(tmp_path / "foc" / "summary.json")
    region, whole = s.pose_precision["region"], s.pose_precision["particle"]
    print("bounds", region, whole)
    assert 0.1 < region.region_mass < 0.4, region
    assert region.angle_deg > 2.0 * whole.angle_deg, (region, whole)
    assert region.angle_deg > 3.0  # the default pose prior
    assert any("too little signal" in w for w in s.warnings), s.warnings
