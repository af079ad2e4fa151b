"""Local-resolution-aware GMMs: each Gaussian blurred by how much coarser its region's local
resolution is than the particle's.

The reference implementation low-pass filters each half map by its local resolution before it fits
the GMM.  Here the same blur acts on the fitted GMM, through the refinement plan's GMM-shaping path
(applied after every fit and every resume, never saved, so it cannot compound): with r(c) the local
resolution at a Gaussian's centre (:func:`gmmcore.localres.local_resolution` of the two half maps)
and r₀ its median over the Gaussians' centres (the particle's density),

    σ'² = σ² + (κ·r_band)²·max(0, (r(c)/r₀)² − 1),   κ = √(ln 2 / 2)/π ≈ 0.187,

κ·r being the σ of the Gaussian filter whose transform is 1/2 at 1/r.  A region at the particle's
median local resolution keeps its Gaussians; one whose local resolution is twice as coarse is blurred
as a map filtered at twice the band's resolution (the local FSC's scale differs from the global
one's, so only the ratio r(c)/r₀ is used).  Centres and amplitudes (masses) never change.

Gold standard: the local resolution comes from both half maps, as the band does from their FSC — a
coupling of the halves through a resolution estimate, never through their signal (the reference
implementation does the same).  ``--gmm-local-res off`` removes it (with ``--maxres`` pinning the
band, the halves are then fully independent: ``tests/test_refine.py``).

Seed density (``--gmm-density local``, :func:`seed_density`): the same local resolution also sets
where a seeded GMM's extra Gaussians go.  ``--gmm-n-scale`` S then applies where the map is as sharp
as its median and fades as (r₀/r)³ to the estimate itself (×1) where it is coarser:

    f(x) = clip(S·(r₀/r(x))³, 1, S),   r₀ = median of r over the map's density,

the factor by which the Gaussians' number density at x changes (N × its mean over the density;
K-means weights × f^(5/3), :mod:`gmmcore.gmm.build`); S < 1 removes Gaussians evenly (f = S).  Only
seeded GMMs (a warm-started one inherits its N).  Measured: benchmarks/realistic/README.md ("×2
where the map is sharp").
"""
from __future__ import annotations

import math

import numpy as np

from ..masks import values_at
from .model import GMM

KAPPA = math.sqrt(math.log(2.0) / 2.0) / math.pi  # σ of the Gaussian filter at half amplitude at 1/r, per Å of r


def local_blur_A(local_res: np.ndarray, centers_A: np.ndarray, apix: float, band_A: float) -> np.ndarray:
    """Extra σ (Å, float64 (n,)) of each Gaussian at ``centers_A`` (Å from the box centre): 0 where
    the local resolution is at most the median over the Gaussians' centres, or unknown (outside the
    mask).  The median is taken at the centres, where the particle's density is — not over the mask,
    whose solvent margin has coarse local resolutions."""
    r = values_at(np.asarray(local_res, np.float64), centers_A, apix)
    known = r[r > 0]
    if known.size == 0:
        return np.zeros(len(r))
    r0 = float(np.median(known))
    ratio2 = np.where(r > 0, (r / r0) ** 2, 1.0)
    return KAPPA * float(band_A) * np.sqrt(np.maximum(ratio2 - 1.0, 0.0))


def widen_to_local_resolution(gmm: GMM, local_res: np.ndarray, apix: float, band_A: float) -> GMM:
    """A copy of ``gmm`` with each Gaussian blurred by :func:`local_blur_A` (see the module notes)."""
    blur = local_blur_A(local_res, gmm.centers, apix, band_A)
    out = gmm.copy()
    out.sigmas = np.sqrt(gmm.sigmas.astype(np.float64) ** 2 + blur ** 2).astype(np.float32)
    out.meta = {**gmm.meta, "local_res": {"widened": int((blur > 0).sum()), "max_blur_A": float(blur.max(initial=0.0)),
                                          "band_A": float(band_A)}}
    return out


def seed_density(local_res: np.ndarray, map_: np.ndarray, scale: float) -> np.ndarray:
    """The seed-density factor f (float64, the map's grid; see the module notes) of a map whose
    local resolution (Å; 0 = unknown, there f = 1) is ``local_res``, for ``scale`` S (``--gmm-n-scale``);
    r₀ is the median local resolution over the voxels above the map's
    :func:`gmmcore.gmm.build.auto_threshold`."""
    from .build import auto_threshold

    r = np.asarray(local_res, np.float64)
    m = np.asarray(map_, np.float64)
    if r.shape != m.shape:
        raise ValueError(f"local resolution {r.shape} and map {m.shape} differ in shape")
    if scale <= 1.0:
        return np.full(m.shape, float(scale))
    threshold, _ = auto_threshold(m)
    known = r[(m > threshold) & (r > 0)]
    if known.size == 0:
        return np.ones(m.shape)
    r0 = float(np.median(known))
    f = np.clip(scale * (r0 / np.where(r > 0, r, r0)) ** 3, 1.0, scale)
    return np.where(r > 0, f, 1.0)
