"""How well a run's GMMs hold the signal of their half maps, scored against the truth (issue 17,
"GMM fidelity").

The fit's own figure (map-vs-GMM FSC, mean over the band) cannot reach 1 on a noisy half map: a GMM
equal to the truth would score √FSC_hh per shell against a half map (FSC_hh: the two half maps'
FSC), because a half map is the truth plus its half's noise.  This tool reports, per iteration and
half, over the GMM's own band (its minres → its target resolution, 1-voxel shells, unmasked as the
fit is):

* ``fit``: FSC(GMM, the half map it was fitted to) — the fit report's figure, recomputed;
* ``cross`` and ``ceiling``: the GMM against the *other* half map, and √max(FSC_hh, 0) — what the
  truth itself would score against either half map (:mod:`gmmcore.gmm.fidelity`, which every
  refinement iteration now reports: no truth needed);
* ``gmm_vs_truth`` / ``map_vs_truth`` (inside each of the set's masks, the maps multiplied by the
  mask): FSC of the GMM and of the half map against the set's true map.  A GMM above its half map
  here keeps the signal and drops noise; a GMM below it has lost signal (too few Gaussians) or fitted
  noise.

The GMM of iteration k is fitted to iteration k − 1's half map (``iterNNN/gmm_half{h}.gmm.npz`` and
``iter{k-1}/half{h}.mrc``); the saved GMM is the fitted one (before the refinement's per-Gaussian
local-resolution blur).

``--refit K``: instead of a run's GMMs, fit new ones to iteration K − 1's half maps (as iteration K
does: its band, seeds from ``--seed``) for each N × ``--n-scale``, fit steps ``--steps`` and
power-spectrum weight ``--amp-weight`` (the loss's second term), and score them the same way — the
N, steps and loss of the fit measured with everything else held fixed.

    python -m benchmarks.realistic.gmm_fidelity --data DIR/flexible \
        --run x1=DIR/runs/flexible/all/global --run x2=DIR/runs/flexible/all/global_n2x \
        --out benchmarks/results/gmm_fidelity.json
    python -m benchmarks.realistic.gmm_fidelity --data DIR/flexible --run x1=DIR/runs/flexible/all/global \
        --refit 5 --n-scale 1 2 4 --steps 300 1000 --amp-weight 0.1 --out benchmarks/results/gmm_fidelity.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gmmcore.fsc import fsc
from gmmcore.gmm.fidelity import band_mean, ceiling_curve
from gmmcore.gmm.model import GMM
from gmmcore.gmm.render import render_map
from gmmcore.io.maps import read_map

from .truth import MASKS


def gmm_scores(gmm: GMM, half: np.ndarray, other: np.ndarray, ceil: np.ndarray, freq: np.ndarray, lo: float,
               res: float, truth: np.ndarray, masks: dict, apix: float) -> dict:
    """The module's scores of one GMM against its half map, the other half map (``ceil``: the
    ceiling curve, :func:`gmmcore.gmm.fidelity.ceiling_curve`) and the truth."""
    g = render_map(gmm, half.shape[0], apix).astype(np.float64)
    mean = lambda c: round(band_mean(freq, c, lo, res), 4)  # noqa: E731
    row = {"n_gaussians": len(gmm), "resolution_A": round(res, 3),
           "fit": mean(fsc(g, half, apix)[1]), "cross": mean(fsc(g, other, apix)[1]), "ceiling": mean(ceil)}
    for name, m in masks.items():
        row[f"gmm_vs_truth_{name}"] = mean(fsc(g * m, truth * m, apix)[1])
        row[f"map_vs_truth_{name}"] = mean(fsc(half * m, truth * m, apix)[1])
    return row


def _halves(run: Path, k: int, apix: float):
    maps = {h: read_map(run / f"iter{k - 1:03d}" / f"half{h}.mrc")[0].astype(np.float64) for h in (1, 2)}
    return (maps, *ceiling_curve(maps[1], maps[2], apix))


def iteration_scores(run: Path, k: int, truth: np.ndarray, masks: dict, apix: float) -> dict:
    """Scores of iteration ``k``'s two GMMs (module notes)."""
    maps, freq, ceil = _halves(run, k, apix)
    out = {}
    for h in (1, 2):
        rep = json.loads((run / f"iter{k:03d}" / f"gmm_half{h}.json").read_text())
        gmm = GMM.load(run / f"iter{k:03d}" / f"gmm_half{h}.gmm.npz")
        row = {"fit_report": round(float(rep["fsc_mean"]), 4)}
        row.update(gmm_scores(gmm, maps[h], maps[3 - h], ceil, freq, float(rep["minres_A"]), float(rep["resolution_A"]),
                              truth, masks, apix))
        out[str(h)] = row
    return out


def refit_scores(run: Path, k: int, truth: np.ndarray, masks: dict, apix: float, n_scales, steps,
                 amp_weights, seed: int = 0, halves=(1, 2)) -> dict:
    """Fresh fits to iteration ``k`` − 1's half maps for every (N scale, steps, amp weight), scored."""
    from gmmcore.gmm.build import build_gmm

    maps, freq, ceil = _halves(run, k, apix)
    out = {}
    for h in halves:
        rep = json.loads((run / f"iter{k:03d}" / f"gmm_half{h}.json").read_text())
        lo, res, n0 = float(rep["minres_A"]), float(rep["resolution_A"]), int(rep["n_gaussians"])
        for s in n_scales:
            for st in steps:
                for aw in amp_weights:
                    gmm, r = build_gmm(maps[h].astype(np.float32), apix, res, n_gaussians=max(8, round(n0 * s)),
                                       seed=seed, minres_A=lo, iterations=st, amp_weight=aw)
                    row = {"n_scale": s, "steps": st, "amp_weight": aw, "seconds": round(r["seconds"], 1)}
                    row.update(gmm_scores(gmm, maps[h], maps[3 - h], ceil, freq, lo, res, truth, masks, apix))
                    out[f"half{h}/n{s:g}/steps{st}/aw{aw:g}"] = row
                    print(h, json.dumps(row), flush=True)
    return out


def _truth(set_dir: Path):
    truth, apix = read_map(set_dir / "truth_map.mrc")
    masks = {k: read_map(set_dir / f)[0].astype(np.float64) for k, f in MASKS.items() if (set_dir / f).is_file()}
    return truth.astype(np.float64), masks, float(apix)


def run_scores(run: Path, set_dir: Path, iterations=None) -> dict:
    truth, masks, apix = _truth(set_dir)
    ks = iterations or sorted(int(p.name[4:]) for p in run.glob("iter[0-9][0-9][0-9]")
                              if (p / "gmm_half1.gmm.npz").is_file())
    return {str(k): iteration_scores(run, k, truth, masks, apix) for k in ks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the set's folder (truth_map.mrc, masks)")
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR (a gmmcore refine folder)")
    ap.add_argument("--iter", type=int, nargs="*", help="iterations (default: all with GMMs)")
    ap.add_argument("--refit", type=int, help="fit new GMMs to this iteration's input half maps instead")
    ap.add_argument("--n-scale", type=float, nargs="+", default=[1.0], help="--refit: N × the run's (default 1)")
    ap.add_argument("--steps", type=int, nargs="+", default=[300], help="--refit: fit steps (default 300)")
    ap.add_argument("--amp-weight", type=float, nargs="+", default=[0.1], help="--refit: power-spectrum weight")
    ap.add_argument("--seed", type=int, default=0, help="--refit: K-means seed")
    ap.add_argument("--halves", type=int, nargs="+", default=[1, 2], choices=(1, 2), help="--refit: which halves")
    ap.add_argument("--out", type=Path, help="JSON (merged into an existing file, key = set/label)")
    a = ap.parse_args(argv)
    res = {}
    for spec in a.run:
        label, _, path = spec.partition("=")
        if a.refit:
            truth, masks, apix = _truth(a.data)
            res[f"{a.data.name}/{label}/refit{a.refit}"] = refit_scores(
                Path(path), a.refit, truth, masks, apix, a.n_scale, a.steps, a.amp_weight, a.seed, a.halves)
            continue
        res[f"{a.data.name}/{label}"] = run_scores(Path(path), a.data, a.iter)
        for k, v in res[f"{a.data.name}/{label}"].items():
            for h, row in v.items():
                print(label, k, h, json.dumps(row), flush=True)
    if a.out:
        old = json.loads(a.out.read_text()) if a.out.is_file() else {}
        old.update(res)
        a.out.write_text(json.dumps(old, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
