"""Focusing a GMM on a region: widen the Gaussians outside a mask (the paper's width mask).

For a mask M with values in 0..1, a Gaussian of width σ centred at c gets

    σ' = σ / (0.25 + 0.75·M(c))

with M sampled at the centre by trilinear interpolation (M clipped to 0..1; centres outside the
box count as M = 0).  Gaussians inside the mask (M = 1) keep σ; one where M = 0 becomes 4× wider;
amplitudes (integrated masses) and centres never change.  Wider Gaussians carry only low
frequencies, so the alignment is driven by the high-resolution features inside the mask while
the rest of the structure still constrains it at low resolution (Chen, Schmid & Chiu 2024,
Methods "Focused refinement").

:func:`widen_outside` makes the :class:`~gmmcore.refine.state.IterationPlan` ``shape_gmm`` hook:
the loop applies it to every fitted *and* every resumed GMM and never saves its result, so the
focus is applied on every path and cannot compound over iterations.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..masks import values_at
from .model import GMM


def width_factors(mask: np.ndarray, centers_A: np.ndarray, apix: float) -> np.ndarray:
    """Per-Gaussian width factor 1 / (0.25 + 0.75·M(c)) (1 inside the mask, 4 where M = 0), float64."""
    m = np.clip(values_at(mask, centers_A, apix), 0.0, 1.0)
    return 1.0 / (0.25 + 0.75 * m)


def widen(gmm: GMM, mask: np.ndarray, apix: float) -> GMM:
    """A copy of ``gmm`` whose Gaussians outside ``mask`` are widened (see the module notes)."""
    f = width_factors(mask, gmm.centers, apix)
    out = gmm.copy()
    out.sigmas = (gmm.sigmas.astype(np.float64) * f).astype(np.float32)
    out.meta = {**gmm.meta, "focus": {"widened": int((f > 1.0).sum()), "max_factor": float(f.max())}}
    return out


def widen_outside(mask: np.ndarray, apix: float) -> Callable[[int, GMM], GMM]:
    """The ``shape_gmm(half, gmm)`` hook of a focused plan: the same mask for both halves."""
    mask = np.asarray(mask, np.float32)

    def shape(half: int, gmm: GMM) -> GMM:
        return widen(gmm, mask, apix)

    shape.focus_mask = mask  # lets a test (or a log line) see which mask a plan carries
    return shape
