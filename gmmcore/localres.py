"""Local resolution of two half maps: a windowed Fourier shell correlation (as blocres does).

At sample points on a grid (every ``step`` voxels; only inside ``mask`` when one is given), a cube
of ``window_px`` voxels centred on the point is cut from both half maps (zeros beyond the box),
multiplied by a soft spherical window (1 within a radius of 3/8·window, raised cosine to 0 at
window/2), Fourier transformed, and the FSC of the two cubes is computed in shells 1 voxel wide
(shell k = frequency k/(window·apix)).  The local resolution is where that FSC first falls below
``threshold`` (linear interpolation between shells), 1/frequency in Å; 2·apix (Nyquist) if it
never does.  Values between sample points are interpolated trilinearly.

Defaults: window 16 voxels, step 2, threshold 0.5 — blocres' usual criterion for small boxes,
whose FSC is much noisier than a whole map's (the 0.143 of full maps would follow the noise).  The
window sets what "local" means and the frequency sampling (window·apix/k Å): regions smaller than
the window are averaged with their surroundings.  Voxels outside ``mask`` (< 0.5) are 0.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

BATCH = 512  # windows transformed at once (memory: BATCH · window³ complex numbers)


def window_function(window_px: int) -> np.ndarray:
    """The soft spherical window of a cube of ``window_px`` voxels (centre at window//2)."""
    from .masks import soft_sphere_mask

    return soft_sphere_mask(window_px, 3.0 * window_px / 8.0, window_px / 8.0).astype(np.float64)


def _shell_matrix(w: int) -> np.ndarray:
    """One-hot (w·w·(w//2+1), w//2+1) shell membership of the rfftn grid of a w³ cube, with the
    rfft weights (kx interior planes count twice)."""
    fz = np.fft.fftfreq(w) * w
    fx = np.fft.rfftfreq(w) * w
    r = np.rint(np.sqrt(fz[:, None, None] ** 2 + fz[None, :, None] ** 2 + fx[None, None, :] ** 2)).astype(int)
    wt = np.full(fx.shape, 2.0)
    wt[0] = 1.0
    if w % 2 == 0:
        wt[-1] = 1.0
    wt = np.broadcast_to(wt, r.shape).ravel()
    m = w // 2 + 1
    r = r.ravel()
    keep = r < m
    M = np.zeros((r.size, m))
    M[np.flatnonzero(keep), r[keep]] = wt[keep]
    return M


def local_resolution(half1: np.ndarray, half2: np.ndarray, apix: float, mask: Optional[np.ndarray] = None,
                     window_px: int = 16, step: int = 2, threshold: float = 0.5) -> np.ndarray:
    """Local resolution map (Å, float32 [z, y, x]) of two half maps (see the module notes)."""
    h1 = np.asarray(half1, np.float64)
    h2 = np.asarray(half2, np.float64)
    n = h1.shape[0]
    if h1.shape != h2.shape or h1.shape != (n, n, n):
        raise ValueError(f"half maps of shapes {h1.shape} and {h2.shape}: need two equal cubes")
    w = int(window_px) + int(window_px) % 2
    step = max(1, int(step))
    win = window_function(w)
    M = _shell_matrix(w)
    p = w // 2
    pad1, pad2 = np.pad(h1, p), np.pad(h2, p)
    v1 = np.lib.stride_tricks.sliding_window_view(pad1, (w, w, w))
    v2 = np.lib.stride_tricks.sliding_window_view(pad2, (w, w, w))
    coarse = np.arange(0, n, step)
    gz, gy, gx = np.meshgrid(coarse, coarse, coarse, indexing="ij")
    pts = np.stack([gz.ravel(), gy.ravel(), gx.ravel()], 1)
    if mask is not None:  # sample only where the answer is kept (plus a step's margin)
        near = ndimage.maximum_filter(np.asarray(mask) >= 0.5, size=2 * step + 1)
        pts_in = near[pts[:, 0], pts[:, 1], pts[:, 2]]
    else:
        pts_in = np.ones(len(pts), bool)
    res = np.full(len(pts), 2.0 * apix)
    idx = np.flatnonzero(pts_in)
    for b0 in range(0, idx.size, BATCH):
        sel = idx[b0:b0 + BATCH]
        z, y, x = pts[sel].T
        # window centred on voxel (z, y, x): padded index z .. z + w, whose centre w//2 is the voxel
        c1 = v1[z, y, x] * win
        c2 = v2[z, y, x] * win
        F1 = np.fft.rfftn(c1, axes=(1, 2, 3)).reshape(len(sel), -1)
        F2 = np.fft.rfftn(c2, axes=(1, 2, 3)).reshape(len(sel), -1)
        num = (F1 * F2.conj()).real @ M
        den = np.sqrt((np.abs(F1) ** 2 @ M) * (np.abs(F2) ** 2 @ M))
        fsc = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        res[sel] = _crossing(fsc, threshold, w * apix)
    grid = res.reshape(len(coarse), len(coarse), len(coarse))
    full = ndimage.map_coordinates(grid, np.mgrid[:n, :n, :n].astype(np.float64) / step, order=1, mode="nearest")
    if mask is not None:
        full = np.where(np.asarray(mask) >= 0.5, full, 0.0)
    return full.astype(np.float32)


def memory_bytes(box: int, window_px: int) -> int:
    """Working memory of :func:`local_resolution` (bytes, about): the padded half maps, one batch
    of windows and their transforms, the shell matrix and the full-size result."""
    w = int(window_px) + int(window_px) % 2
    m = w // 2 + 1
    padded = 2 * (box + w) ** 3 * 8
    batch = min(BATCH, box ** 3) * (2 * w ** 3 * 8 + 2 * w * w * m * 16 + 3 * w * w * m * 8)
    shells = w * w * m * m * 8
    return int(padded + batch + shells + 4 * box ** 3 * 8)


def _crossing(fsc: np.ndarray, threshold: float, length_A: float) -> np.ndarray:
    """Per row: resolution (Å) where the FSC (shells 0..m-1) first falls below ``threshold``."""
    m = fsc.shape[1]
    below = fsc[:, 1:] < threshold
    first = np.where(below.any(1), below.argmax(1) + 1, -1)
    out = np.full(len(fsc), length_A / (m - 1))  # never falls: Nyquist
    for i in np.flatnonzero(first > 0):
        k = first[i]
        if k == 1:
            f = 1.0
        else:
            c0, c1 = fsc[i, k - 1], fsc[i, k]
            f = (k - 1) + (c0 - threshold) / (c0 - c1) if c0 != c1 else k
        out[i] = length_A / max(f, 1.0)
    return out


def region_summary(local: np.ndarray, mask: np.ndarray) -> dict:
    """Median, 10th and 90th percentile of a local-resolution map within ``mask`` ≥ 0.5 (Å)."""
    v = local[(np.asarray(mask) >= 0.5) & (local > 0)]
    if v.size == 0:
        return {"median": float("nan"), "p10": float("nan"), "p90": float("nan"), "voxels": 0}
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
            "voxels": int(v.size)}
