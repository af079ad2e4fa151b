"""Slow tier: global refinement on a small REALISTIC set (RELION projections of an atom-model map, CTF,
white noise at SNR 0.1 — benchmarks/realistic/generate.py) must bring the poses nearer the truth.

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
