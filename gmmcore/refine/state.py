"""What one refinement iteration hands the next, and what differs between refinement modes.

* :class:`RefinementState` — iteration number, poses, the two half maps, the measured
  gold-standard resolution, and the GMMs fitted in that iteration (raw, never shaped).
* :class:`IterationPlan` — everything a refinement mode chooses: symmetry, the FSC mask, the mask
  applied to each half map before its GMM is fitted, the resolution band as a function of the
  measured resolution, the ``shape_gmm`` hook (focused refinement widens Gaussians outside its
  mask), the alignment settings and the centre of the pose prior.

Global, focused and patch refinement are the same :func:`gmmcore.refine.loop.iterate` with
different plans; a new mode is a new plan, not a new loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..gmm.align import AlignSettings
from ..gmm.model import GMM
from ..particles import HalfPair, Poses


@dataclass(frozen=True)
class Band:
    """The frequencies a comparison uses: rings from ``minres_A`` to ``resolution_A`` (Å)."""

    minres_A: float
    resolution_A: float


@dataclass(frozen=True)
class RefinementState:
    """The state between iterations (iteration 0 = the input poses)."""

    iteration: int
    poses: Poses
    half_maps: HalfPair  # HalfPair[np.ndarray], float32 [z, y, x]
    resolution_A: float  # measured, gold-standard (masked FSC 0.143)
    gmms: Optional[HalfPair] = None  # HalfPair[GMM] fitted in this iteration (not shaped)


def unshaped(half: int, gmm: GMM) -> GMM:
    """The identity ``shape_gmm`` hook (global refinement)."""
    return gmm


def measured_resolution(state: "RefinementState") -> float:
    """The default band source: the state's gold-standard resolution (masked FSC 0.143), Å."""
    return state.resolution_A


def fsc01_resolution(fsc_mask: np.ndarray, apix: float, factor: float = 0.9) -> Callable[["RefinementState"], float]:
    """The reference code's band source: ``factor`` × the resolution where the masked FSC of the
    state's half maps falls below 0.1 (finer than the 0.143 point), Å."""
    from ..fsc import fsc_masked, resolution_at

    def source(state: "RefinementState") -> float:
        freq, curve = fsc_masked(state.half_maps[1], state.half_maps[2], apix, fsc_mask)
        return float(factor * resolution_at(freq, curve, 0.1))
    return source


def band_source(rule: str, fsc_mask: np.ndarray, apix: float) -> Callable[["RefinementState"], float]:
    """The measured resolution the band follows for a ``--band-rule`` (gmmcore.defaults.BAND_RULES)."""
    if rule == "fsc0143":
        return measured_resolution
    if rule == "fsc01":
        return fsc01_resolution(fsc_mask, apix)
    raise ValueError(f"unknown band rule {rule!r}")


def follow_fsc(minres_A: float, apix: float, maxres_A: Optional[float] = None) -> Callable[[float], Band]:
    """The global band rule: target = the measured resolution, never beyond 0.95·Nyquist nor
    finer than ``maxres_A``; rings from ``minres_A``."""
    def band(measured_A: float) -> Band:
        res = max(measured_A, 2.0 * apix * 1.05)
        if maxres_A:
            res = max(res, maxres_A)
        return Band(float(minres_A), float(res))
    return band


@dataclass(frozen=True)
class IterationPlan:
    """What one refinement mode does in every iteration.

    ``shape_gmm(half, gmm)`` is applied to each half's GMM after it is fitted *and* after it is
    loaded on resume, and its result is never saved — so a focus cannot be forgotten on one path
    nor compound over iterations.  ``band_source(state)`` is the measured resolution ``band``
    follows (:func:`band_source`: the FSC-0.143 resolution, or the reference's 0.9 × FSC-0.1).  ``drop_worst``: that fraction of each
    half's particles with the lowest alignment score (weighted FRC) is left out of the half map (the
    reference code drops 10 %); every particle keeps its pose in the output.  ``align_from``: each iteration's search starts at the last
    iteration's poses ("previous") or at ``prior`` ("prior": the scatter of early, coarse-band
    iterations does not carry over; the result is the search from the prior centre against the
    latest GMM).  ``fit_mask`` (or None) multiplies each half map before its GMM
    is fitted (its transform by ``gmm_fit``: "fourier" or "hermitian", :func:`gmmcore.gmm.build.fit_gmm`); ``fsc_mask`` is used for the masked FSC only.  ``prior`` is the centre of the MAP
    pose prior (None: the poses each iteration starts from)."""

    sym: str
    fsc_mask: np.ndarray
    band: Callable[[float], Band]
    align: AlignSettings
    fit_mask: Optional[np.ndarray] = None
    shape_gmm: Callable[[int, GMM], GMM] = unshaped
    prior: Optional[Poses] = None
    ngauss: Optional[int] = None
    seed: int = 0
    pad: float = 2
    extra_report: Callable[[HalfPair], dict] = field(default=lambda maps: {})
    band_source: Callable[["RefinementState"], float] = measured_resolution
    align_from: str = "previous"  # where each local search starts: "previous" poses or the "prior" centre
    drop_worst: float = 0.0  # fraction of each half's lowest-scoring particles left out of its reconstruction
    gmm_fit: str = "fourier"  # "fourier" or "hermitian": the fit's GMM transform (gmmcore.gmm.build.fit_gmm)
    gmm_start: str = "seed"  # "warm": iterations ≥ 2 start each half's GMM from its previous one (gmm.warm)
    gmm_local_res: str = "off"  # "on": GMMs blurred by their local resolution before shape_gmm (gmm.localwidth)
    gmm_n_scale: float = 1.0  # seeded GMMs: the estimated number of Gaussians × this (gmm.build.estimate_n_gaussians)
    gmm_density: str = "uniform"  # "local": gmm_n_scale where the map is sharp, fading to ×1 where coarser (gmm.localwidth)

    def band_of(self, state: "RefinementState") -> Band:
        """The band of the iteration that starts from ``state``."""
        return self.band(self.band_source(state))
