"""Contrast transfer function (RELION's form) on an rfft grid, and phase flipping.

CTF(k) = −sin(χ(k)) with (RELION ``CTF::getCTF``)

    χ = −π λ Δf(φ) |k|² + (π/2) Cs λ³ |k|⁴ − φ_shift − atan(Q / √(1 − Q²))
    Δf(φ) = (dU + dV)/2 + (dU − dV)/2 · cos(2(φ − angle))

k in 1/Å (x = column, y = row; φ = atan2(ky, kx)), λ the relativistic electron wavelength (Å),
Δf > 0 underfocus (Å), Cs in Å (from mm), Q the amplitude contrast, φ_shift the phase-plate shift.
The sign of (dU − dV) is kept: dU is the defocus along the azimuth ``angle``.
An optional B-factor multiplies by exp(−B |k|² / 4).
"""
from __future__ import annotations

import numpy as np

from .fourier import freq_index, ft, ift
from .particles import CTFParams


BATCH = 1024  # images per sub-batch in phase_flip (memory bound)


def wavelength_A(voltage_kv) -> np.ndarray:
    """Relativistic electron wavelength (Å) for an accelerating voltage in kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def _as_arrays(ctf: CTFParams):
    f = lambda a: np.atleast_1d(np.asarray(a, dtype=np.float64))  # noqa: E731
    return (f(ctf.defocus_u), f(ctf.defocus_v), f(ctf.defocus_angle), f(ctf.voltage), f(ctf.cs),
            f(ctf.amp_contrast), f(ctf.phase_shift), f(ctf.bfactor))


def ctf_2d(ctf: CTFParams, apix: float, box: int, rfft: bool = True) -> np.ndarray:
    """CTF of each particle on the (r)fft grid of a box × box image: float32 (k, box, box//2+1).

    ``rfft=False`` gives the full (box, box) grid in FFT order (origin at index 0).
    """
    du, dv, ang, kv, cs, q, phase, bfac = _as_arrays(ctf)
    k = du.size
    bc = lambda a: np.broadcast_to(a, (k,))[:, None, None]  # noqa: E731
    ky, kx = freq_index((box, box), rfft)
    fx = kx / (box * float(apix))
    fy = ky / (box * float(apix))
    return ctf_formula(*(bc(a) for a in (du, dv, ang, kv, cs, q, phase, bfac)), fx, fy).astype(np.float32)


def ctf_formula(du, dv, angle_deg, voltage_kv, cs_mm, amp_contrast, phase_deg, bfactor, fx, fy, xp=np):
    """The CTF formula of the module docstring at frequencies (fx, fy) 1/Å, all arguments broadcast
    together.  ``xp`` is the array module (NumPy; the JAX backend passes ``jax.numpy`` so a device
    reconstruction uses this very formula).  Composed of :func:`ctf_image_terms` (what depends on
    the particle only), :func:`ctf_contrast` (−sin χ) and the B-factor envelope."""
    u2 = fx ** 2 + fy ** 2
    azim = xp.arctan2(fy, fx)
    out = ctf_contrast(xp)(*ctf_image_terms(du, dv, angle_deg, voltage_kv, cs_mm, amp_contrast, phase_deg, xp),
                           u2, azim)
    if xp is not np or np.any(bfactor != 0):
        out = out * xp.exp(-bfactor / 4.0 * u2)
    return out


def ctf_image_terms(du, dv, angle_deg, voltage_kv, cs_mm, amp_contrast, phase_deg, xp=np) -> tuple:
    """The particle's terms of χ: (mean defocus, half astigmatism (Å), astigmatism angle (rad),
    −πλ (Å), (π/2)·Cs·λ³ (Å⁴), phase shift (rad), amplitude-contrast phase (rad)) — the arguments
    of :func:`ctf_contrast` before |k|² and the azimuth."""
    v = voltage_kv * 1e3
    lam = 12.2643247 / xp.sqrt(v * (1.0 + v * 0.978466e-6))  # relativistic wavelength, Å
    cs_A = cs_mm * 1e7
    k3 = xp.arctan(amp_contrast / xp.sqrt(1.0 - amp_contrast ** 2))
    return (0.5 * (du + dv), 0.5 * (du - dv), angle_deg * (np.pi / 180.0), -np.pi * lam,
            0.5 * np.pi * cs_A * lam ** 3, phase_deg * (np.pi / 180.0), k3)


_CONTRAST = {}


def ctf_contrast(xp=np):
    """``contrast(mean, half, angle, a1, a2, shift, k3, u2, azim)`` = −sin χ at |k|² = u2 (1/Å²) and
    azimuth ``azim`` (rad) for the :func:`ctf_image_terms` of a particle, written with ``xp``'s
    functions: NumPy arrays, JAX arrays, or — compiled by numba with ``xp`` = NumPy — one sample
    inside a compiled kernel (:mod:`gmmcore.insertion`), the same operations in the same order."""
    if xp not in _CONTRAST:
        def contrast(mean, half, angle, a1, a2, shift, k3, u2, azim):
            defocus = mean + half * xp.cos(2.0 * (azim - angle))
            chi = a1 * defocus * u2 + a2 * u2 ** 2 - shift - k3
            return -xp.sin(chi)

        _CONTRAST[xp] = contrast
    return _CONTRAST[xp]


def ctf_columns(ctf: CTFParams) -> np.ndarray:
    """Per-particle CTF parameters as (k, 8) float64 columns in :func:`ctf_formula`'s order."""
    return np.stack(np.broadcast_arrays(*_as_arrays(ctf)), axis=1)


def phase_flip(images: np.ndarray, ctf: CTFParams, apix: float) -> np.ndarray:
    """Multiply each image's Fourier transform by sign(CTF): float32 (k, n, n) in and out."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        return phase_flip(images[None], ctf, apix)[0]
    n = images.shape[-1]
    if images.shape[-2] != n:
        raise ValueError("phase_flip expects square images")
    out = np.empty_like(images)
    # Sub-batches bound the float64 CTF / complex FFT temporaries whatever the number of images.
    for b0 in range(0, len(images), BATCH):
        sl = slice(b0, b0 + BATCH)
        per_image = np.atleast_1d(np.asarray(ctf.defocus_u)).size == len(images)
        sub = ctf.subset(np.arange(len(images))[sl]) if per_image else ctf  # one CTF broadcast to all
        sign = np.where(ctf_2d(sub, apix, n) < 0, -1.0, 1.0).astype(np.float32)
        out[sl] = ift(ft(images[sl], 2) * sign, (n, n))
    return out


def apply_ctf(images: np.ndarray, ctf: CTFParams, apix: float) -> np.ndarray:
    """Multiply each image's Fourier transform by its CTF (for simulation): float32 (k, n, n)."""
    images = np.asarray(images, dtype=np.float32)
    n = images.shape[-1]
    return ift(ft(images, 2) * ctf_2d(ctf, apix, n), (n, n)).astype(np.float32)
