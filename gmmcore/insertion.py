"""Trilinear insertion of central-slice samples into the reconstructor's accumulator, compiled.

The CPU kernel of :class:`gmmcore.reconstruct.Reconstructor` (numba).  For each image i, sample s
at 2-D frequency (kx, ky) (padded-grid units) and symmetry operator r, the 3-D frequency is
q = A_{ir}ᵀ(kx, ky, 0); samples with q_x < 0 are moved to −q with the conjugate value (Friedel),
and the record (value.real, value.imag, weight) is added with trilinear weights to the 8 voxels
around q, at the accumulator rows ``tz[z] + ty[y] + tx[x]`` (:class:`gmmcore.reconstruct.Bricks`).

It also centres each sample (phase shift by the origin) and weights it by |CTF| — given, or
evaluated here from the particle's :func:`gmmcore.ctf.ctf_image_terms` by the compiled
:func:`gmmcore.ctf.ctf_contrast` (the same formula, operation for operation, and the same libm
cos/sin as NumPy's, rounded to float32 as the NumPy path rounds it; an image whose terms equal the
previous image's reuses its values) — so no (images × samples) temporaries are made.  The arithmetic is the NumPy path's except for the centring phase:
there each sample's exp(−2πi(kx·ox + ky·oy)/P) is one cos/sin of the float64 phase; here it is the
product of the image's per-axis factors exp(−2πi·kx·ox/P)·exp(−2πi·ky·oy/P) (481 cos/sin pairs
per image at box 160 instead of 40,344), equal up to float64 rounding (a few 1e-16 relative).  The
rest is operation for operation: the value (complex128) times c·mult, weight c·c·mult; q, floors
and fractions in float32, each corner's weight (w_z·w_y)·w_x in float32, widened to float64 and
multiplied by the float64 record.  The additions come in another order — a sample's operators and
8 corners one after the other (the NumPy path adds corner by corner over a pass of images and one
operator after the other) — so a voxel's sums may differ in the last bits of float64, which the
float32 map does not show.  Each sample's corners share 4 cache lines of one brick most of the
time, and neighbouring samples land in the same bricks: on a memory-bound scatter that is what
makes it fast.

:func:`kernel` is None where numba is not installed (e.g. a GPU machine whose environment lacks
it; a device insertion kernel serves there); the reconstructor then uses its NumPy path.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

_KERNEL = None
_TRIED = False


def _compile() -> Optional[Callable]:
    try:
        from .insertion_compiled import insert
    except ImportError:
        return None
    return insert


def kernel() -> Optional[Callable]:
    """The compiled kernel ``insert(acc, tz, ty, tx, kx, ky, A, F, origins, c, mult, P, terms, u2, azim)`` — ``acc``
    (V, 3) float64 and its row offsets ``tz``/``ty``/``tx`` (int64, per z/y/x index); ``kx``/``ky``
    (S,) float32 sample frequencies; ``A`` (b, m, 3, 3) float32, image i's rotation times each of
    the m symmetry operators; ``F`` (b, S) complex64 padded transforms, not yet centred; ``origins``
    (b, 2) float64 pixels; ``c`` (b, S) float64 CTF weights; ``mult`` (S,) float64; ``terms`` (b, 7)
    float64 the particles' CTF terms, the weights then |CTF| at the samples' |k|² ``u2`` and azimuth
    ``azim`` (S,) float64 (``c`` is not read), or (0, 7) to use ``c`` — or None without numba, or
    with ``GMMCORE_NUMPY_INSERTION=1`` (the NumPy path)."""
    global _KERNEL, _TRIED
    if os.environ.get("GMMCORE_NUMPY_INSERTION") == "1":
        return None
    if not _TRIED:
        _TRIED = True
        _KERNEL = _compile()
    return _KERNEL
