"""How much of the signal of a half map a GMM holds, without a known truth.

The fit's own figure (map-vs-GMM FSC against the half map it was fitted to) rises with every
Gaussian added: more Gaussians also fit that half's noise.  The figures here tell signal from noise
by the other half map, whose noise the GMM has not seen:

* ``cross``: FSC(GMM of half h, half map of the other half), mean over the GMM's band;
* ``ceiling``: √max(FSC_hh, 0), mean over the same band (FSC_hh: the two half maps' FSC) — what a
  GMM equal to the truth would score against either half map (a half map is the truth plus its
  half's noise, so FSC(truth, half)² = FSC_hh in expectation).  ``cross`` approaches it only as
  the GMM approaches the truth; missing signal and fitted noise both keep it lower.

Shells: :func:`gmmcore.fsc.fsc` (1 voxel wide, unmasked, as the fit sees the map); band: spatial
frequencies 1/minres ≤ s ≤ 1/resolution (Å).  Reported after both halves' GMMs exist and never fed
back into a refinement: the halves stay independent.  Measured on the realistic sets in
benchmarks/realistic/README.md ("GMM fidelity").
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..fsc import fsc
from .model import GMM
from .render import render_map


def band_mean(freq: np.ndarray, curve: np.ndarray, minres_A: float, resolution_A: float) -> float:
    """Mean of ``curve`` over the shells with 1/minres_A ≤ freq ≤ 1/resolution_A (freq in 1/Å)."""
    sel = (np.asarray(freq) >= 1.0 / minres_A) & (np.asarray(freq) <= 1.0 / resolution_A)
    return float(np.mean(np.asarray(curve)[sel])) if sel.any() else float("nan")


def ceiling_curve(half1: np.ndarray, half2: np.ndarray, apix: float):
    """(freq 1/Å, √max(FSC_hh, 0)) of two half maps: what the truth scores against either."""
    freq, hh = fsc(half1, half2, apix)
    return freq, np.sqrt(np.clip(hh, 0.0, None))


def cross_half_fidelity(gmms: Dict[int, GMM], half_maps: Dict[int, np.ndarray], apix: float,
                        resolution_A: float, minres_A: float, backend=None) -> Dict[str, float]:
    """{"1": cross of half 1's GMM, "2": cross of half 2's GMM, "ceiling": ceiling} (module notes);
    ``half_maps``: the half maps the GMMs were built from (same grid, ``apix`` Å/voxel; a GMM fitted
    within a mask holds nothing outside it, and scores that loss too).  ``backend``: the run's array
    backend, which renders the GMMs (default: :func:`gmmcore.backend.get_backend`)."""
    box = int(half_maps[1].shape[0])
    freq, ceil = ceiling_curve(half_maps[1], half_maps[2], apix)
    out = {"ceiling": band_mean(freq, ceil, minres_A, resolution_A)}
    for h in (1, 2):
        g = render_map(gmms[h], box, apix, backend=backend)
        out[str(h)] = band_mean(freq, fsc(g, half_maps[3 - h], apix)[1], minres_A, resolution_A)
    return out
