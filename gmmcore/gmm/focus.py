"""Focusing a GMM on a region: widen the Gaussians outside a mask (the paper's width mask).

For a mask M with values in 0..1, sampled at a Gaussian's centre c by trilinear interpolation
(clipped to 0..1; centres outside the box count as M = 0), and the mask level L (0 < L ≤ 1,
default 0.25), let d = L + (1 − L)·M(c).  Two width rules:

- ``variance`` (default): σ'² = σ² / d, so σ' = σ / √d — at most 2× wider at L = 0.25.  This is
  the reference implementation's rule (EMAN2 ``e2gmm_refine_iter.py --masksigma --masklevel``
  divides the model's width parameter, which enters its projector as exp(−k²·w), w ∝ σ², by d).
- ``sigma``: σ' = σ / d — at most 4× wider at L = 0.25, as the paper's Methods text writes it.

On realistic particles (RELION projections of atomic-model maps, SNR 0.05) the 4× rule leaves
the rest of the molecule almost no signal in the alignment band, the small focused region alone
drives the poses and they wander; the 2× rule keeps the core as an anchor (figures in
docs/ARCHITECTURE.md and the README).  Gaussians inside the mask (M = 1) keep σ exactly;
amplitudes (integrated masses) and centres never change (Chen, Schmid & Chiu 2024, Methods
"Focused refinement").

:func:`widen_outside` makes the :class:`~gmmcore.refine.state.IterationPlan` ``shape_gmm`` hook:
the loop applies it to every fitted *and* every resumed GMM and never saves its result, so the
focus is applied on every path and cannot compound over iterations.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable

import numpy as np

from .. import defaults
from ..masks import values_at
from .model import GMM


class WidthRule(str, Enum):
    """How the mask level widens a Gaussian outside the focus (see the module notes)."""

    VARIANCE = "variance"  # σ'² = σ²/d: the reference implementation's rule (≤ 2× at L = 0.25)
    SIGMA = "sigma"  # σ' = σ/d: the paper's text (≤ 4× at L = 0.25)


DEFAULT_WIDTH_RULE = WidthRule(defaults.WIDTH_RULE)
DEFAULT_MASK_LEVEL = defaults.MASK_LEVEL


def check_mask_level(level: float) -> float:
    """The mask level L must lie in (0, 1]; ValueError otherwise (NaN included)."""
    level = float(level)
    if not 0.0 < level <= 1.0:  # False for NaN too
        raise ValueError(f"mask level must be in (0, 1], got {level}")
    return level


def width_factors(mask: np.ndarray, centers_A: np.ndarray, apix: float,
                  level: float = DEFAULT_MASK_LEVEL,
                  rule: "WidthRule | str" = DEFAULT_WIDTH_RULE) -> np.ndarray:
    """Per-Gaussian real-space width factor σ'/σ (1 inside the mask), float64: 1/d (``sigma``)
    or 1/√d (``variance``) with d = L + (1 − L)·M(c); ``centers_A`` (n, 3) Å from the box centre."""
    level, rule = check_mask_level(level), WidthRule(rule)
    m = np.clip(values_at(mask, centers_A, apix), 0.0, 1.0)
    d = level + (1.0 - level) * m
    return 1.0 / d if rule is WidthRule.SIGMA else 1.0 / np.sqrt(d)


def widen(gmm: GMM, mask: np.ndarray, apix: float, level: float = DEFAULT_MASK_LEVEL,
          rule: "WidthRule | str" = DEFAULT_WIDTH_RULE) -> GMM:
    """A copy of ``gmm`` whose Gaussians outside ``mask`` are widened (see the module notes)."""
    f = width_factors(mask, gmm.centers, apix, level, rule)
    out = gmm.copy()
    out.sigmas = (gmm.sigmas.astype(np.float64) * f).astype(np.float32)
    out.meta = {**gmm.meta, "focus": {"widened": int((f > 1.0).sum()), "max_factor": float(f.max()),
                                      "rule": WidthRule(rule).value, "level": float(level)}}
    return out


def widen_outside(mask: np.ndarray, apix: float, level: float = DEFAULT_MASK_LEVEL,
                  rule: "WidthRule | str" = DEFAULT_WIDTH_RULE) -> Callable[[int, GMM], GMM]:
    """The ``shape_gmm(half, gmm)`` hook of a focused plan: the same mask for both halves."""
    mask = np.asarray(mask, np.float32)
    level, rule = check_mask_level(level), WidthRule(rule)

    def shape(half: int, gmm: GMM) -> GMM:
        return widen(gmm, mask, apix, level, rule)

    shape.focus_mask = mask  # lets a test (or a log line) see which mask a plan carries
    shape.width_rule, shape.mask_level = rule, level
    return shape
