"""The start of a half map's GMM from the GMM of the previous iteration of the SAME half
(``--gmm-start warm``): no N estimate, no K-means.

Only half h's own previous GMM and half h's new map are used (the gold standard: the other half is
never looked at).  Coordinates and units as :mod:`gmmcore.gmm.model` (Å from the box centre,
amplitudes = masses, widths = real-space σ in Å); maps [z, y, x].

Rules (each a documented default):

* **N** (:func:`warm_n_gaussians`): the paper's rule wants the Gaussians' nearest-neighbour distance
  to equal the target resolution; in the same volume that distance scales as N^(−1/3), so the
  number for the new band is ``N_new = N_prev·(res_prev/res_new)³`` — the power law
  :func:`gmmcore.gmm.build.estimate_n_gaussians` uses for its correction step, applied to the
  previous N (the first iteration's K-means estimate, carried along the bands: N_k =
  N_1·(res_1/res_k)³) instead of two new K-means runs.  Clamped as the estimate clamps: at least 8,
  at most 100,000 and at most the number of voxels it would cluster
  (:func:`gmmcore.gmm.build.kept_voxels`).  Measured against the fresh estimate at the new band:
  +0 % / +11 % (sim_small, 12 → 9 Å, the two halves), +27 % (box 160, 4.5 → 3.5 Å): the kept volume
  shrinks at a finer band (its mass concentrates).  Scaling by the ratio of the kept volumes as well
  (the estimate's first guess N₀ ∝ V/res³) was tried and rejected: −12 % / −23 % on sim_small, with
  a map-vs-GMM FSC 0.03–0.07 below the fresh build's, while too many Gaussians cost only time.  A
  number given by the user (``--ngauss``) is used as it is.
* **More Gaussians** (:func:`split_gaussians`): the heaviest Gaussian (largest amplitude) is split
  into two of half its amplitude, placed ``± res_new/2`` along the main axis of the map's density
  around it (the leading eigenvector of the second moment of max(map − background, 0) within
  ``res_new`` of its centre, Gaussian-weighted), so the two children sit the target
  nearest-neighbour distance apart; a Gaussian split again uses its ancestor's next axis (second,
  then third eigenvector), so repeated splits do not pile up on one line.  Repeated until N_new —
  heaviest first, as the fresh seeding's mass-weighted K-means puts more seeds where the mass is.
* **Fewer Gaussians** (:func:`merge_gaussians`): nearest pairs (mutual nearest neighbours, closest
  first) are merged by mass: centre = mass-weighted mean, amplitude = sum, σ² = the mass-weighted
  mean of σ² plus the pair's between-centre variance per axis (a·b/(a+b)²·|c_a − c_b|²/3), so the
  merged Gaussian keeps the pair's mass and second moment.  Repeated until N_new.
* **Widths**: every σ (kept, split or merged) × ``res_new/res_prev`` — the fresh seeding starts at
  σ = 0.3·res, so a GMM seeded that way at the previous band is rescaled to the fresh start's
  widths at the new band, and fitted widths keep their relative sizes.
* **Fit**: :func:`gmmcore.gmm.build.fit_gmm` from these centres, amplitudes and widths for
  :data:`WARM_STEPS` steps instead of 300 (the step count measured by
  ``benchmarks/bench_gmm_build.py --warm``: the map-vs-GMM FSC of the warm fit within noise of the
  fresh 300-step build's).
"""
from __future__ import annotations

import heapq
from typing import Optional

import numpy as np

from ..errors import InputError
from .build import N_MAX, N_MIN, kept_voxels
from .model import GMM

WARM_STEPS = 100  # fit steps of a warm-started GMM (the fresh build's default is 300)


def warm_n_gaussians(n_prev: int, res_prev_A: float, res_new_A: float, n_min: int = N_MIN,
                     n_max: int = N_MAX) -> int:
    """N for the band ``res_new_A`` from ``n_prev`` Gaussians at ``res_prev_A``:
    N_prev·(res_prev/res_new)³, rounded, clamped to [n_min, n_max] (module notes)."""
    if not (res_prev_A > 0 and res_new_A > 0):
        raise InputError("resolutions must be positive", field="resolution")
    n = float(n_prev) * (float(res_prev_A) / float(res_new_A)) ** 3
    return int(min(max(round(n), n_min), n_max))


def _main_axes(map_: np.ndarray, apix: float, centers: np.ndarray, radius_A: float,
               background: Optional[float] = None, chunk: int = 256) -> np.ndarray:
    """(k, 3, 3): per centre the eigenvectors (columns, x y z; largest eigenvalue first) of the second
    moment of max(map − median, 0) around it, weighted by exp(−r²/2·radius²), within 2·radius."""
    m = np.asarray(map_, np.float32)
    b = float(np.median(m)) if background is None else float(background)
    c = np.asarray(centers, np.float64).reshape(-1, 3)
    if len(c) > chunk:
        return np.concatenate([_main_axes(m, apix, c[i:i + chunk], radius_A, b, chunk)
                               for i in range(0, len(c), chunk)])
    n = m.shape[0]
    h = max(1, int(np.ceil(2.0 * radius_A / apix)))
    o = np.arange(-h, h + 1)
    oz, oy, ox = np.meshgrid(o, o, o, indexing="ij")
    off = np.stack([ox.ravel(), oy.ravel(), oz.ravel()], axis=1)  # (v, 3) voxel offsets, x y z
    r2 = (off.astype(np.float64) ** 2).sum(axis=1) * apix**2
    keep = r2 <= (2.0 * radius_A) ** 2
    off, win = off[keep], np.exp(-0.5 * r2[keep] / radius_A**2)
    base = np.rint(c / apix).astype(np.int64) + n // 2  # (k, 3) voxel x y z
    vox = base[:, None, :] + off[None, :, :]  # (k, v, 3)
    inside = np.all((vox >= 0) & (vox < n), axis=2)
    vox = np.clip(vox, 0, n - 1)
    w = np.maximum(m[vox[..., 2], vox[..., 1], vox[..., 0]] - b, 0.0) * win[None, :] * inside
    rel = (vox - base[:, None, :]).astype(np.float64)  # offsets from the voxel nearest the centre
    wsum = np.maximum(w.sum(axis=1), 1e-30)
    mean = np.einsum("kv,kvi->ki", w, rel) / wsum[:, None]
    d = rel - mean[:, None, :]
    cov = np.einsum("kv,kvi,kvj->kij", w, d, d) / wsum[:, None, None] + 1e-9 * np.eye(3)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, :, ::-1]


def split_gaussians(gmm: GMM, n_new: int, map_: np.ndarray, apix: float, spacing_A: float) -> GMM:
    """``gmm`` grown to ``n_new`` Gaussians: the heaviest split in two (half the amplitude each, same
    σ) at ± ``spacing_A``/2 along the map's main axis around it (module notes)."""
    n_old = len(gmm)
    if n_new <= n_old:
        return gmm.copy()
    axes = _main_axes(map_, apix, gmm.centers, max(spacing_A, apix))
    centers = [c for c in np.asarray(gmm.centers, np.float64)]
    amps = [float(a) for a in gmm.amplitudes]
    sigmas = [float(s) for s in gmm.sigmas]
    lineage = list(range(n_old))  # the original Gaussian whose axes a Gaussian uses
    depth = [0] * n_old  # splits along its lineage so far: which axis it splits along next
    heap = [(-a, i) for i, a in enumerate(amps)]
    heapq.heapify(heap)
    half = 0.5 * float(spacing_A)
    while len(centers) < n_new:
        _, i = heapq.heappop(heap)
        u = axes[lineage[i]][:, depth[i] % 3]
        c = centers[i]
        amps[i] *= 0.5
        depth[i] += 1
        centers[i] = c + half * u
        centers.append(c - half * u)
        amps.append(amps[i])
        sigmas.append(sigmas[i])
        lineage.append(lineage[i])
        depth.append(depth[i])
        heapq.heappush(heap, (-amps[i], i))
        heapq.heappush(heap, (-amps[-1], len(centers) - 1))
    return GMM(np.array(centers), np.array(amps), np.array(sigmas), dict(gmm.meta))


def merge_gaussians(gmm: GMM, n_new: int) -> GMM:
    """``gmm`` shrunk to ``n_new`` Gaussians by merging nearest pairs by mass, closest first
    (mass and second moment kept; module notes)."""
    from scipy.spatial import cKDTree

    c = np.asarray(gmm.centers, np.float64)
    a = np.asarray(gmm.amplitudes, np.float64)
    s2 = np.asarray(gmm.sigmas, np.float64) ** 2
    n_new = max(1, int(n_new))
    while len(c) > n_new:
        d, j = cKDTree(c).query(c, k=2)
        d, j = d[:, 1], j[:, 1]
        i = np.arange(len(c))
        pairs = i[(j[j] == i) & (i < j)]  # mutual nearest neighbours, each pair once
        pairs = pairs[np.argsort(d[pairs], kind="stable")][: len(c) - n_new]
        p, q = pairs, j[pairs]
        ap, aq = a[p], a[q]
        tot = np.maximum(ap + aq, 1e-30)
        cm = (ap[:, None] * c[p] + aq[:, None] * c[q]) / tot[:, None]
        between = ap * aq / tot**2 * ((c[p] - c[q]) ** 2).sum(axis=1) / 3.0
        s2m = (ap * s2[p] + aq * s2[q]) / tot + between
        c[p], a[p], s2[p] = cm, ap + aq, s2m
        keep = np.ones(len(c), bool)
        keep[q] = False
        c, a, s2 = c[keep], a[keep], s2[keep]
    return GMM(c, a, np.sqrt(s2), dict(gmm.meta))


def warm_start(previous: GMM, map_: np.ndarray, apix: float, resolution_A: float,
               n_gaussians: Optional[int] = None) -> GMM:
    """The start GMM for ``map_`` (this half's new map, low-passed to the band) at ``resolution_A``
    from ``previous`` (this half's GMM of the last iteration, whose meta holds its
    ``resolution_A``): N by :func:`warm_n_gaussians` (or ``n_gaussians``), split or merged, widths ×
    res_new/res_prev (module notes)."""
    res_prev = float(previous.meta.get("resolution_A", resolution_A))
    if n_gaussians is None:
        kept = kept_voxels(map_, apix)  # at most one Gaussian per voxel K-means would cluster
        n_gaussians = warm_n_gaussians(len(previous), res_prev, resolution_A, n_max=min(N_MAX, max(kept, N_MIN)))
    n = int(n_gaussians)
    if n > len(previous):
        start = split_gaussians(previous, n, map_, apix, resolution_A)
    else:
        start = merge_gaussians(previous, n)
    start.sigmas = (start.sigmas * np.float32(resolution_A / res_prev)).astype(np.float32)
    start.meta = {k: v for k, v in previous.meta.items() if k in ("box", "apix")}
    start.meta.update({"warm_from_resolution_A": res_prev, "warm_from_n": len(previous)})
    return start
