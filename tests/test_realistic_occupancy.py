"""Slow tier: heterogeneity on a small REALISTIC partial-occupancy set (RELION projections of
atom-model maps, CTF, white noise — benchmarks/realistic/generate.py, ``kind="occupancy"``): the
assembly of six ADK copies without its swing, the two-copy domain (a third of the mass) present in
a random half of the particles (truth.npz ``t``: 1 present, 0 absent).

At half occupancy the domain's density sits near the GMM's threshold, so the consensus GMM can
leave it out; `gmmcore heterogeneity --mask <domain>` then re-seeds the neutral GMM on the masked
region (``gmmcore.heter.analysis._cover_region``).  With the domain in the GMM, the decoder's
amplitude head can fade it, and PC1 must separate the particles that have it from those that do
not (area under the ROC curve of PC1 for presence, both halves).  A neutral GMM without the
domain (the bug the re-seeding fixed) gives an AUC of 0.5 — chance — on the full set.
Skipped when RELION (`relion_project`) is not installed.

Steps: 1,500 particles, box 48 at 3 Å/px, SNR 0.1, start poses ≈ 2.4° / 1.2 px from the truth;
``refine --iter 2``; ``heterogeneity --mask domain_mask.mrc --amplitude on``, 2 latent
dimensions, band to 8 Å, short training (HETEROGENEITY).  Seed spread: at MIN_AUC.  About 6 min
on 2 shared cores (global 2 iterations, then ≈ 5.5 min of training).
"""
import json
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("relion_project") is None,
                                 reason="RELION (relion_project) not installed")]

SMALL = dict(kind="occupancy", n=1500, seed=1, box=48, apix=3.0, snr=0.1)
ITERATIONS = 2
HETEROGENEITY = ["--amplitude", "on", "--maxres", "8", "--latent", "2", "--epochs", "20", "--full-epochs", "10",
                 "--lr", "3e-3", "--lr-full", "1e-3"]
THREADS = ["--threads", "2"]  # the same on every machine: run-order and thread-count independent sizes
# PC1 AUC for presence per half, seeds 1–5 (`benchmarks/seed_spread.py --suite occupancy`; the GMM's share of the
# mask over the map's in brackets, * = re-seeded):
#   1: .972* (.58) .966* (.78)   2: .923* (.76) .947* (.64)   3: .972* (.77) .972* (.56)
#   4: .975* (.35) .968* (.54)   5: .931 (.92) .935 (.98)      mean .956, s.d. .019 (mean − 3 s.d. .90)
# Re-seeding only below half the map's share (the first version) left seed 1 at .802 / .744 (the others'
# worse halves .56–.70): a regression of the re-seeding fails here.
MIN_AUC = 0.85


def occupancy_measures(root, seed: int = SMALL["seed"]) -> dict:
    """Generate, import, refine and run heterogeneity under ``root`` (steps already finished are
    skipped: benchmarks/seed_spread.py reuses them); → each half's PC1 AUC for presence, the decoded
    domain mass ratio (absent / present) and the mask coverage before / after re-seeding."""
    from benchmarks.realistic.latent_check import latent_scores
    from gmmcore.cli import main
    from tests.helpers import realistic_global

    root = Path(root)
    set_dir, glob = realistic_global(root, {**SMALL, "seed": seed}, ITERATIONS, THREADS)
    het = root / "het"
    if not (het / "final" / "latents.csv").is_file():
        assert main(["heterogeneity", "--from", str(glob), "--out", str(het), "--mask",
                     str(set_dir / "domain_mask.mrc"), *HETEROGENEITY, *THREADS, "--seed", str(seed)]) == 0
    scores = latent_scores(het, set_dir)
    halves = json.loads((het / "summary.json").read_text())["halves"]
    return {"auc": [scores[h]["auc_pc1_state"] for h in ("1", "2")],
            "mass_ratio": [scores[h]["decoded_mass_ratio"] for h in ("1", "2")],
            "coverage": [halves[h].get("mask_coverage") for h in ("1", "2")]}


def test_pc1_separates_the_particles_that_have_the_half_present_domain(tmp_path):
    m = occupancy_measures(tmp_path)
    print("occupancy measures", m)
    assert m["coverage"][0].get("region_seeded"), m  # half 1's GMM holds 0.58 of the map's share: re-seeded
    assert min(m["auc"]) >= MIN_AUC, m
