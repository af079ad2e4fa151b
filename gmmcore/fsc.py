"""Fourier shell correlation, resolution at a threshold, and the half-map report.

Shells are 1 voxel wide (rounded radius, :func:`gmmcore.fourier.radial_index`); shell k has
spatial frequency k / (N·apix).  Shells 0..N//2 are reported.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .fourier import ft, ift, radial_index, rfft_weights, shell_frequencies
from .masks import auto_fsc_mask


def fsc(map1: np.ndarray, map2: np.ndarray, apix: float) -> Tuple[np.ndarray, np.ndarray]:
    """FSC of two equally shaped cubic maps: (freq 1/Å (m,), fsc (m,)), m = N//2 + 1."""
    map1 = np.asarray(map1, dtype=np.float64)
    map2 = np.asarray(map2, dtype=np.float64)
    if map1.shape != map2.shape:
        raise ValueError(f"FSC of maps of different shapes {map1.shape} vs {map2.shape}")
    n = map1.shape[-1]
    F1, F2 = ft(map1), ft(map2)
    return shell_frequencies(n, apix), _shell_corr(F1, F2, map1.shape)


def _shell_corr(F1, F2, shape) -> np.ndarray:
    n = shape[-1]
    m = n // 2 + 1
    idx = radial_index(shape)
    w = np.broadcast_to(rfft_weights(shape), idx.shape)
    keep = idx < m
    idx, w = idx[keep], w[keep]
    F1, F2 = F1[keep], F2[keep]
    num = np.bincount(idx, w * (F1 * F2.conj()).real, m)
    d1 = np.bincount(idx, w * np.abs(F1) ** 2, m)
    d2 = np.bincount(idx, w * np.abs(F2) ** 2, m)
    den = np.sqrt(d1 * d2)
    out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return out


def resolution_at(freq: np.ndarray, curve: np.ndarray, threshold: float = 0.143) -> float:
    """Resolution (Å) where ``curve`` first drops below ``threshold`` (from shell 1 on).

    Linear interpolation between the two shells around the crossing; Nyquist (1/freq[-1]) if it
    never crosses.
    """
    freq = np.asarray(freq, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    below = np.flatnonzero(curve[1:] < threshold)
    if below.size == 0:
        return float(1.0 / freq[-1])
    i = int(below[0]) + 1
    if i == 1 and curve[0] < threshold:
        f = freq[1]
    else:
        c0, c1 = curve[i - 1], curve[i]
        t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
        f = freq[i - 1] + t * (freq[i] - freq[i - 1])
    return float(1.0 / max(f, freq[1]))


def fsc_masked(map1: np.ndarray, map2: np.ndarray, apix: float, mask: np.ndarray,
               correct: bool = True, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """FSC of masked maps, corrected for the mask's own correlation by phase randomisation
    (Chen et al. 2013) when ``correct``: beyond the shell where the unmasked FSC falls below 0.8,
    phases of both maps are randomised, the masked FSC of those is FSC_n, and
    FSC_true = (FSC_t − FSC_n) / (1 − FSC_n) beyond that shell."""
    map1 = np.asarray(map1, dtype=np.float64)
    map2 = np.asarray(map2, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    freq, fsc_t = fsc(map1 * mask, map2 * mask, apix)
    if not correct:
        return freq, fsc_t
    _, fsc_u = fsc(map1, map2, apix)
    below = np.flatnonzero(fsc_u[1:] < 0.8)
    if below.size == 0:
        return freq, fsc_t
    k0 = int(below[0]) + 1
    if k0 + 2 >= freq.size:
        return freq, fsc_t
    shape = map1.shape
    idx = radial_index(shape)
    rng = np.random.default_rng(seed)
    rand = idx >= k0
    # Independent random phases for each map destroy their true correlation beyond k0; what the
    # mask still correlates there is its own contribution.
    r1, r2 = (ift(np.where(rand, ft(m) * np.exp(2j * np.pi * rng.random(idx.shape)), ft(m)), shape)
              for m in (map1, map2))
    _, fsc_n = fsc(r1 * mask, r2 * mask, apix)
    out = fsc_t.copy()
    hi = np.arange(freq.size) >= k0 + 2
    den = 1.0 - fsc_n[hi]
    out[hi] = np.where(np.abs(den) > 1e-6, (fsc_t[hi] - fsc_n[hi]) / np.where(np.abs(den) > 1e-6, den, 1.0), 0.0)
    return freq, out


def half_map_report(half1: np.ndarray, half2: np.ndarray, apix: float, mask: Optional[np.ndarray] = None,
                    threshold: float = 0.143) -> dict:
    """Gold-standard FSC summary of two half maps.

    Returns ``{"resolution", "resolution_unmasked", "resolution_masked",
    "fsc": {"freq", "unmasked", "masked"}}`` (Å, 1/Å; lists), ``resolution`` = masked resolution.
    ``mask`` defaults to :func:`masks.auto_fsc_mask` of the halves.
    """
    half1 = np.asarray(half1, dtype=np.float32)
    half2 = np.asarray(half2, dtype=np.float32)
    if mask is None:
        mask = auto_fsc_mask(half1, half2, apix)
    freq, fsc_u = fsc(half1, half2, apix)
    _, fsc_m = fsc_masked(half1, half2, apix, mask)
    res_u = resolution_at(freq, fsc_u, threshold)
    res_m = resolution_at(freq, fsc_m, threshold)
    return {
        "resolution": res_m,
        "resolution_unmasked": res_u,
        "resolution_masked": res_m,
        "fsc": {"freq": [float(f) for f in freq], "unmasked": [float(v) for v in fsc_u],
                "masked": [float(v) for v in fsc_m]},
    }
