"""How well a heterogeneity run's latent follows a flexible set's true motion (truth.npz ``t``).

    python -m benchmarks.realistic.latent_check --data benchmarks/realistic_cache/flexible \
        --run runs/flexible/all/heterogeneity_default [--out result.json]

Per half: Spearman |ρ| between PC1 and the particle's true state t, and R² of t on the whole
latent (least squares with a constant).  On a two-state set (the occupancy set: t 0 or 1) also the
area under the ROC curve of PC1 for the state (max(AUC, 1 − AUC): 0.5 no separation, 1 perfect) and
the moving Gaussians' decoded mass (× their motion weights) at the mean latent of the t-0 particles
over that at the t-1 particles' (the occupancy set: 0 is the truth; a decoder without its amplitude
head keeps 1).  And the run's own figure: the decoded GMM's gain in ring-weighted FRC over the
neutral one, per half.  Rows are matched to the set by image index (the imported stack keeps the
generated order: ``k@particles.mrcs`` is truth row k − 1).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu, spearmanr

from gmmcore.heter.latent import read_latents_csv


def latent_scores(run, set_dir) -> dict:
    """{"1": {"rho_pc1_t", "r2_latent_t", "n"}, "2": ...} of ``run``/final/latents.csv against the
    set's truth.npz."""
    from gmmcore.heter.pair import HalfNetwork

    lat = read_latents_csv(Path(run) / "final" / "latents.csv")
    summary = json.loads((Path(run) / "summary.json").read_text())
    t_all = np.load(Path(set_dir) / "truth.npz")["t"]
    rows = np.array([int(str(nm).split("@")[0]) - 1 for nm in lat["rlnImageName"]])
    out = {}
    for h in (1, 2):
        s = np.asarray(lat["half"]) == h
        t, z = t_all[rows[s]], np.asarray(lat["latent"], np.float64)[s]
        design = np.column_stack([z, np.ones(len(z))])
        fit = design @ np.linalg.lstsq(design, t, rcond=None)[0]
        out[str(h)] = {"rho_pc1_t": round(abs(float(spearmanr(np.asarray(lat["pc1"])[s], t)[0])), 3),
                       "r2_latent_t": round(1.0 - float(np.sum((t - fit) ** 2) / np.sum((t - t.mean()) ** 2)), 3),
                       "n": int(s.sum())}
        states = np.unique(t)
        if len(states) == 2:
            pc1 = np.asarray(lat["pc1"], np.float64)[s]
            a, b = pc1[t == states[1]], pc1[t == states[0]]
            auc = float(mannwhitneyu(a, b).statistic) / (len(a) * len(b))
            out[str(h)]["auc_pc1_state"] = round(max(auc, 1.0 - auc), 3)
            net = HalfNetwork.load(Path(run) / "final" / f"network_half{h}.npz")
            move = net.decoder.layout.move  # each Gaussian's motion weight (the mask at its centre)
            mass = [float((net.decoder.gmm(z[t == st].mean(0)).amplitudes * move).sum()) for st in states]
            out[str(h)]["decoded_mass_ratio"] = round(mass[0] / mass[1], 3)
        rep = summary["halves"][str(h)]
        out[str(h)]["frc_gain_decoded"] = round(float(rep["frc_decoded"]) - float(rep["frc_neutral"]), 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the generated set's folder (truth.npz)")
    p.add_argument("--run", required=True, nargs="+", help="heterogeneity run folder(s)")
    p.add_argument("--out", help="write the scores here (JSON, keyed by run folder)")
    a = p.parse_args(argv)
    res = {r: latent_scores(r, a.data) for r in a.run}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
