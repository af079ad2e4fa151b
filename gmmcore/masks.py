"""Soft masks: spheres, the automatic mask around a map's density, values at points.

Masks are float32 arrays indexed [z, y, x] with values in 0..1, the box centre at index N//2.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from scipy import ndimage

from .fourier import lowpass


def soft_sphere_mask(box: int, radius_px: float, edge_px: float = 5.0, center=None) -> np.ndarray:
    """Soft spherical mask (float32 (box, box, box)): 1 within ``radius_px``, raised-cosine to 0
    over ``edge_px``.  ``center`` is (z, y, x) in pixels (default the box centre N//2)."""
    c = np.full(3, box // 2, dtype=np.float64) if center is None else np.asarray(center, dtype=np.float64)
    z, y, x = np.ogrid[:box, :box, :box]
    r = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
    return _soft_edge(r - radius_px, edge_px)


def _soft_edge(d: np.ndarray, edge_px: float) -> np.ndarray:
    """d ≤ 0 → 1, d ≥ edge → 0, raised cosine between."""
    if edge_px <= 0:
        return (d <= 0).astype(np.float32)
    t = np.clip(d / edge_px, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def auto_mask(volume: np.ndarray, apix: float, lowpass_A: float = 15.0, threshold: Optional[float] = None,
              dilate_px: float = 3.0, edge_px: float = 6.0) -> np.ndarray:
    """Soft mask around the density of ``volume``.

    Low-pass to ``lowpass_A``, binarise at ``threshold`` (default: median + 0.1·(max − median) of
    the low-passed map), dilate by ``dilate_px`` and add a raised-cosine edge ``edge_px`` wide.
    """
    v = lowpass(np.asarray(volume, dtype=np.float32), apix, max(lowpass_A, 2.0 * apix))
    if threshold is None:
        med = float(np.median(v))
        threshold = med + 0.1 * (float(v.max()) - med)
    binary = v > threshold
    if not binary.any():
        return np.ones_like(v, dtype=np.float32)
    # Distance (px) of every voxel from the thresholded density: dilation and edge in one go.
    d = ndimage.distance_transform_edt(~binary)
    return _soft_edge(d - dilate_px, edge_px)


def points_mask(points_A, box: int, apix: float, radius_A: float, edge_px: float = 3.0,
                exclude_A=None) -> np.ndarray:
    """Soft mask (float32 (box,)*3) around points (Å, (x, y, z) from the box centre N//2): 1 at
    voxels within ``radius_A`` of a point — and, when ``exclude_A`` points are given, no farther
    from the points than from any excluded point (the region that belongs to these points, not to
    their neighbours) — then a raised-cosine edge ``edge_px`` pixels wide outside that region."""
    from scipy.spatial import cKDTree

    g = (np.indices((box,) * 3).reshape(3, -1).T[:, ::-1] - box // 2) * float(apix)  # voxel (x, y, z) Å
    d_in, _ = cKDTree(np.asarray(points_A, np.float64).reshape(-1, 3)).query(g, distance_upper_bound=radius_A + 1e-6)
    core = np.isfinite(d_in)
    if exclude_A is not None and len(exclude_A):
        d_ex, _ = cKDTree(np.asarray(exclude_A, np.float64).reshape(-1, 3)).query(g[core])
        keep = d_in[core] <= d_ex
        core[np.flatnonzero(core)[~keep]] = False
    core = core.reshape((box,) * 3)
    if not core.any():
        return np.zeros((box,) * 3, np.float32)
    return _soft_edge(ndimage.distance_transform_edt(~core), edge_px)


def partition_masks(support: np.ndarray, points_A, labels, k: int, apix: float, dilate_px: float = 2.0,
                    edge_px: float = 5.0) -> List[np.ndarray]:
    """``k`` soft masks that share out a binary ``support`` ([z, y, x]) by points: a support voxel
    belongs to part ``labels[j]`` (0..k−1) of its nearest point j (Å, (x, y, z) from the box centre
    N//2); part i's mask is 1 within ``dilate_px`` of its voxels and falls to 0 over a raised-cosine
    edge ``edge_px`` wide, so neighbouring parts overlap by about dilate + edge pixels.  A part
    with no voxel gets an all-zero mask."""
    from scipy.spatial import cKDTree

    support = np.asarray(support, bool)
    box = support.shape[0]
    idx = np.argwhere(support)  # (m, 3) as (z, y, x)
    _, nearest = cKDTree(np.asarray(points_A, np.float64).reshape(-1, 3)).query((idx[:, ::-1] - box // 2) * float(apix))
    part = np.asarray(labels, np.int64)[nearest]
    out = []
    for i in range(k):
        core = np.zeros(support.shape, bool)
        core[tuple(idx[part == i].T)] = True
        out.append(_soft_edge(ndimage.distance_transform_edt(~core) - dilate_px, edge_px) if core.any()
                   else np.zeros(support.shape, np.float32))
    return out


def values_at(volume: np.ndarray, points_A, apix: float) -> np.ndarray:
    """Trilinear values of ``volume`` ([z, y, x], box centre N//2) at points (Å, (x, y, z) from
    the box centre); points outside the box get 0.  Returns float64 (n,)."""
    vol = np.asarray(volume, np.float64)
    n = vol.shape[0]
    p = np.asarray(points_A, np.float64).reshape(-1, 3)
    coords = (p[:, ::-1] / float(apix) + n // 2).T  # (3, n) as (z, y, x) voxel indices
    return ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)


MIN_MASK_VOXELS = 125  # voxels with M ≥ 0.5: a 5³ cube — anything smaller cannot carry an FSC


def check_mask(mask: np.ndarray, path=None, field: str = "--mask") -> np.ndarray:
    """A user's soft mask must hold weights in 0..1 (±0.001) and enclose at least
    :data:`MIN_MASK_VOXELS` voxels at M ≥ 0.5; InputError naming the file otherwise."""
    from .errors import InputError

    m = np.asarray(mask, np.float32)
    lo, hi = float(m.min()), float(m.max())
    if hi <= 0:
        raise InputError("the mask is empty (all values ≤ 0)", path=path, field=field)
    if lo < -1e-3 or hi > 1.001:
        raise InputError(f"mask values must lie between 0 and 1 (found {lo:.3g} … {hi:.3g}): a mask is a soft 0..1 "
                         "weight, not a map", path=path, field=field)
    inside = int(np.count_nonzero(m >= 0.5))
    if inside < MIN_MASK_VOXELS:
        raise InputError(f"the mask encloses only {inside} voxels at ≥ 0.5 (at least {MIN_MASK_VOXELS} are needed "
                         "for a masked FSC)", path=path, field=field)
    return m


def check_in_particle_sphere(mask: np.ndarray, path=None, field: str = "--mask") -> None:
    """A user's mask must put some weight inside the sphere a particle can occupy
    (:func:`particle_sphere`); InputError naming the file otherwise.  The check before any write
    where the particle's map is not known yet (``refine``, ``reconstruct``: :func:`check_overlap`
    follows once the run has made the map)."""
    from .errors import InputError

    box = np.shape(mask)[0]
    if not _weight_within(mask, particle_sphere(box)) > 0:
        raise InputError(f"the mask lies entirely outside the sphere a particle can occupy (radius {box / 2:g} px "
                         "around the box centre), so it cannot overlap the particle (wrong box position or origin?)",
                         path=path, field=field)


def particle_sphere(box: int) -> np.ndarray:
    """Where a particle can lie in a box of ``box`` pixels (bool (box,)*3): within box/2 pixels of
    the box centre N//2."""
    return soft_sphere_mask(box, box / 2, edge_px=0) > 0


def _weight_within(mask: np.ndarray, region: np.ndarray) -> float:
    """The mask's total weight inside ``region`` (bool, same grid)."""
    return float(np.asarray(mask, np.float32)[region].sum())


def check_overlap(mask: np.ndarray, density: np.ndarray, apix: float, path=None, field: str = "--mask") -> None:
    """A user's mask must overlap the particle: some weight where the automatic mask of ``density``
    (e.g. the average of the half maps) is ≥ 0.5; InputError naming the file otherwise."""
    from .errors import InputError

    if not _weight_within(mask, auto_mask(density, apix) >= 0.5) > 0:
        raise InputError("the mask does not overlap the particle's density (wrong box position or origin?)",
                         path=path, field=field)


def auto_fsc_mask(half1: np.ndarray, half2: np.ndarray, apix: float) -> np.ndarray:
    """The automatic FSC mask of two half maps: :func:`auto_mask` of their average (the one rule
    wherever no FSC mask is given)."""
    return auto_mask(0.5 * (half1 + half2), apix)
