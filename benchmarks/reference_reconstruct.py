"""The reconstructor's insertion as it was before issue 20 — the straightforward form, kept as a
reference only: the CTF on the whole padded grid, then ``np.add.at`` per trilinear corner into
separate complex data and float weight arrays.

Used by ``tests/test_reconstruct_equivalence.py`` (the current insertion must give the same sums
bit for bit) and by ``benchmarks/bench_iteration.py --compare-reconstruction`` (timing).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def reference_sums(rec, images, rotations, origins_A, ctf, phase_flipped: bool,
                   out: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Σ data·c and Σ weight·c² of ``images`` inserted on the grid of ``rec`` (a
    :class:`gmmcore.reconstruct.Reconstructor`: its padding, selection, multiplicities and symmetry
    operators), ``rotations`` (n, 3, 3) RELION A, ``origins_A`` (n, 2) Å, ``ctf`` CTFParams or
    None; added to ``out`` (data complex128, weight float64, ((P+1)²·nx,)) when given, else to new
    zero arrays.  Returns (data, weight)."""
    from gmmcore.ctf import ctf_2d, phase_flip

    P, nx = rec.P, rec.nx
    if out is None:
        data = np.zeros((P + 1) * (P + 1) * nx, np.complex128)
        weight = np.zeros_like(data, dtype=np.float64)
    else:
        data, weight = out
    images = np.asarray(images, np.float32)
    if ctf is not None and not phase_flipped:
        images, phase_flipped = phase_flip(images, ctf, rec.apix), True
    k, S = len(images), rec._sel.size
    origins_px = np.asarray(origins_A, np.float64) / rec.apix
    per = max(1, 3_000_000 // (8 * S))
    for b0 in range(0, k, per):
        b1 = min(k, b0 + per)
        F = rec._centred(rec._transforms(images[b0:b1]), origins_px[b0:b1])
        if ctf is None:
            c = np.ones((b1 - b0, S))
        else:
            c = ctf_2d(ctf.subset(np.arange(b0, b1)), rec.apix, P).reshape(b1 - b0, -1)[:, rec._sel].astype(np.float64)
            c = np.abs(c)
        vals, wts = F * (c * rec._mult), c * c * rec._mult
        for R in rec.sym_ops:
            A = (rotations[b0:b1] @ R).astype(np.float32)
            kx, ky = rec._kx, rec._ky
            qx = kx * A[:, 0, 0:1] + ky * A[:, 1, 0:1]
            sgn = np.where(qx < 0, np.float32(-1), np.float32(1))
            qx *= sgn
            qy = (kx * A[:, 0, 1:2] + ky * A[:, 1, 1:2]) * sgn
            qz = (kx * A[:, 0, 2:3] + ky * A[:, 1, 2:3]) * sgn
            v = (vals.real + 1j * (vals.imag * sgn)).ravel()
            w = wts.ravel()
            x0, y0, z0 = np.floor(qx), np.floor(qy), np.floor(qz)
            fx, fy, fz = (qx - x0).ravel(), (qy - y0).ravel(), (qz - z0).ravel()
            x0 = x0.astype(np.int64).ravel()
            y0 = (y0.astype(np.int64).ravel() + P // 2) * nx
            z0 = (z0.astype(np.int64).ravel() + P // 2) * ((P + 1) * nx)
            for dz, wz in ((0, 1.0 - fz), (1, fz)):
                for dy, wy in ((0, 1.0 - fy), (1, fy)):
                    for dx, wx in ((0, 1.0 - fx), (1, fx)):
                        tw = wz * wy * wx
                        idx = z0 + dz * (P + 1) * nx + y0 + dy * nx + x0 + dx
                        np.add.at(data, idx, v * tw)
                        np.add.at(weight, idx, w * tw)
    return data, weight


class ReferenceReconstructor:
    """A :class:`gmmcore.reconstruct.Reconstructor` whose insertion is :func:`reference_sums`
    (``insert`` accumulates, ``finish`` hands the sums to the current reconstructor's finish)."""

    def __init__(self, box: int, apix: float, pad: int = 2, sym: str = "C1"):
        from gmmcore.reconstruct import Reconstructor

        self.rec = Reconstructor(box, apix, pad=pad, sym=sym)
        P, nx = self.rec.P, self.rec.nx
        self.data = np.zeros((P + 1) * (P + 1) * nx, np.complex128)
        self.weight = np.zeros((P + 1) * (P + 1) * nx, np.float64)

    def insert(self, images, rotations, origins_A, ctf, phase_flipped: bool) -> None:
        reference_sums(self.rec, images, rotations, origins_A, ctf, phase_flipped, out=(self.data, self.weight))

    def finish(self) -> np.ndarray:
        lay = self.rec.layout  # the sums (row-major grid) into the reconstructor's empty accumulator
        lay.add(self.rec.acc, np.stack([self.data.real, self.data.imag, self.weight], axis=1).reshape(lay.shape + (3,)))
        return self.rec.finish()
