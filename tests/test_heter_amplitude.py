"""Slow tier: the heterogeneity decoder's amplitude head (``--amplitude on``) against a known change
of occupancy.

Data: the simulator's ADK (400 particles, box 48, 2 Å/px, SNR 2, true poses), then the clean
CTF-modulated projection of the LID (residues 122–159, ≈ 16 Gaussians of the half GMMs inside the
domain mask) subtracted from a random half of the images — those particles lack the LID, the noise
stays.  Consensus at the true poses (``refine --iter 0``), then ``heterogeneity --mask <LID mask>``.
Known answer: the LID's mass is 0 in the absent particles, unchanged in the others.

Measured (seeds 3–6, the same steps in a script; 8 halves): with the amplitude head, Spearman ρ
between PC1 and absence 0.864–0.866 (√3/2 = 0.866 is a perfect split of a balanced binary variable;
without the head 0.76–0.83); decoded LID mass at the absent particles' mean latent over the present
ones' 0.11–0.23 (the truth is 0; positions alone keep it 1 by construction); the decoded GMM's gain
in ring-weighted FRC over the neutral one 0.0189–0.0218 with the head, 0.0094–0.0134 without, the
difference per half 0.0065–0.0097 (mean 0.0082, s.d. 0.0012).  Margins: |ρ| ≥ 0.80, mass ratio
≤ 0.45, FRC gain ≥ the head-less run's + 0.003 (mean − 4 s.d.).  About 2 min on 2 cores.
"""
from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
from scipy.stats import spearmanr

from gmmcore.cli import main

pytestmark = pytest.mark.slow

SEED = 3
SIM = dict(n_particles=400, box=48, apix=2.0, snr=2.0, seed=SEED, domain="lid", domain_angle_deg=0.0,
           perturb_angle_deg=0.0, perturb_shift_px=0.0, show_progress=False)
RHO_MIN = 0.80
RATIO_MAX = 0.45
GAIN_MARGIN = 0.003
HET_ARGS = ["--maxres", "6", "--epochs", "10", "--full-epochs", "5", "--bins", "2", "--chunk", "64", "--cpu"]


def _lid_partly_absent(d):
    """The simulated set with the LID's projection taken out of a random half of the images → (sim, absent)."""
    from gmmcore.simulate import clean_particles, load_model, simulate_dataset

    sim = simulate_dataset(d / "sim", **SIM)
    absent = np.random.default_rng([SEED, 99]).random(SIM["n_particles"]) < 0.5
    model = load_model(domain="lid")
    lid_only = {**model, "amplitudes": model["amplitudes"] * model["domain"]["atoms"], "domain": None}
    idx = np.flatnonzero(absent)
    lid = clean_particles(lid_only, sim["rotations"][idx], sim["origins_A"][idx], sim["ctf"].subset(idx),
                          SIM["apix"], SIM["box"])
    with mrcfile.open(sim["stack"], mode="r+") as m:
        data = m.data.copy()
        data[idx] -= lid
        m.set_data(data)
    return sim, absent


def test_amplitude_head_finds_a_missing_domain(tmp_path):
    from gmmcore.heter.pair import HalfNetwork

    sim, absent = _lid_partly_absent(tmp_path)
    assert main(["refine", "--particles", str(sim["true_star"]), "--iter", "0", "--cpu", "--out",
                 str(tmp_path / "cons")]) == 0
    gains = {}
    for amp in ("on", "off"):
        het = tmp_path / f"het_{amp}"
        assert main(["heterogeneity", "--from", str(tmp_path / "cons"), "--out", str(het), "--mask",
                     str(sim["domain_mask"]), "--amplitude", amp, *HET_ARGS]) == 0
        with np.load(het / "final" / "latents.npz") as z:
            lat = {k: z[k] for k in z.files}
        summary = json.loads((het / "summary.json").read_text())
        for h in (1, 2):
            m = lat["half"] == h
            rep = summary["halves"][str(h)]
            gains[amp, h] = rep["frc_decoded"] - rep["frc_neutral"]
            if amp == "off":
                continue
            rho = spearmanr(lat["pcs"][m, 0], absent[m]).correlation
            net = HalfNetwork.load(het / "final" / f"network_half{h}.npz")
            domain = net.decoder.layout.move > 0.5
            mass = {k: net.decoder.gmm(lat["latent"][m & sel].mean(0)).amplitudes[domain].sum()
                    for k, sel in (("absent", absent), ("present", ~absent))}
            ratio = mass["absent"] / mass["present"]
            print(f"half {h}: rho {rho:+.3f}, decoded domain mass absent/present {ratio:.3f}")
            assert domain.sum() >= 8
            assert abs(rho) >= RHO_MIN, rho
            assert ratio <= RATIO_MAX, ratio
    print("FRC gain decoded - neutral:", {k: round(v, 4) for k, v in gains.items()})
    for h in (1, 2):
        assert gains["on", h] >= gains["off", h] + GAIN_MARGIN, gains
