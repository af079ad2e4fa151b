"""Direct Fourier inversion: the one reconstructor, and the two half maps of a particle table.

Each image is padded ``pad``× (zero padding, image centre N//2 at padded centre P//2), centred by
its origin (Fourier phase shift by +origin), Fourier transformed, and its samples within the
original Nyquist radius are inserted into a 3-D rfft volume of the padded box at Aᵀ(kx, ky, 0)
(central-slice theorem for I(p) = ∫V(Aᵀp)dz) with trilinear weights.  The volume accumulates
data·c and weight·c², c = |CTF| for phase-flipped images (CTF for raw images).  With symmetry each
slice is inserted at A·R for every operator R of the group.  ``finish`` divides data by
(weight + regulariser), inverse transforms, divides by the real-space transform of the trilinear
kernel (sinc² per axis) and crops to the box.

The two half sets are independent, so :func:`reconstruct_halves` reconstructs them in two worker
processes (spawned, so a parent that has initialised TensorFlow is safe); each streams its own
images chunk by chunk, so memory does not grow with the number of particles.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Optional

import numpy as np
import scipy.fft as sfft

from .ctf import ctf_2d, phase_flip
from .errors import InputError
from .fourier import freq_index, radial_index
from .particles import CTFParams, HalfPair, check_geometry, check_split
from .resources import cpu_threads
from .symmetry import symmetry_matrices

_PARALLEL_MIN_PARTICLES = 2000  # below this, reconstruct_halves runs the halves one after the other
_ENTRIES_PER_PASS = 3_000_000  # scatter entries per bincount pass (memory knob, not a result knob)
READ_BLOCK = 1024  # images read at once: memory is bounded by this, not by the dataset or --chunk


class Reconstructor:
    """Accumulate images into a padded 3-D Fourier volume; ``finish`` gives the map.

    ``box`` (pixels) and ``apix`` (Å/pixel) of the images; ``pad`` the padding factor; ``sym`` a
    point group (C1, Cn, Dn, T, O, I).
    """

    def __init__(self, box: int, apix: float, pad: float = 2, sym: str = "C1"):
        self.box = int(box)
        self.apix = float(apix)
        P = int(round(float(pad) * self.box))
        P += P % 2
        if P < self.box:
            raise InputError(f"padding factor must be >= 1 (got {pad})", field="--pad")
        self.P = P
        self.sym_ops = symmetry_matrices(sym)
        self.sym = sym
        self.nx = P // 2 + 2  # one spare x column so the trilinear corner x0+1 is always in range
        # Sums on a (P+1, P+1, nx) grid, z/y index j ↔ frequency j − P/2 (see _scatter, _sums).
        self.data = np.zeros((P + 1) * (P + 1) * self.nx, dtype=np.complex128)
        self.weight = np.zeros((P + 1) * (P + 1) * self.nx, dtype=np.float64)
        self.count = 0
        # 2-D samples used: the padded rfft grid within the original Nyquist radius (P/2).
        ky, kx = freq_index((P, P))
        ky, kx = np.broadcast_arrays(ky, kx)
        r = np.sqrt(kx.astype(float) ** 2 + ky.astype(float) ** 2)
        sel = r < P / 2
        self._sel = np.flatnonzero(sel)
        self._kx = kx[sel].astype(np.float32)
        self._ky = ky[sel].astype(np.float32)
        # The kx = 0 column holds each Friedel pair twice: half weight each.
        self._mult = np.where(self._kx == 0, 0.5, 1.0)

    # ------------------------------------------------------------------ insertion
    def insert(self, images: np.ndarray, rotations: np.ndarray, origins_A: np.ndarray, ctf: Optional[CTFParams],
               phase_flipped: bool, on_pass=None) -> None:
        """Insert images (k, n, n) with RELION rotations (k, 3, 3) and origins (k, 2) Å.

        ``on_pass(n)`` is called after each pass of n images (progress).  ``ctf=None`` means no CTF (c = 1).  Raw (not phase-flipped) images are first flipped on
        their own grid — where their CTF really lives — and then weighted by |CTF| on the padded
        grid like phase-flipped data; multiplying the padded transform by the CTF instead would
        misplace every CTF sign change that the unpadded grid aliases (high defocus, small boxes).
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if ctf is not None and not phase_flipped:
            images = phase_flip(images, ctf, self.apix)
            phase_flipped = True
        k, n = images.shape[0], self.box
        if images.shape[1:] != (n, n):
            raise ValueError(f"images of shape {images.shape[1:]} for a box of {n}")
        rotations = np.asarray(rotations, dtype=np.float64).reshape(k, 3, 3)
        origins_px = np.asarray(origins_A, dtype=np.float64).reshape(k, 2) / self.apix
        S = self._sel.size
        per = max(1, _ENTRIES_PER_PASS // (8 * S))
        for b0 in range(0, k, per):
            b1 = min(k, b0 + per)
            F = self._slices(images[b0:b1], origins_px[b0:b1])
            if ctf is None:
                c = np.ones((b1 - b0, S))
            else:
                sub = ctf.subset(np.arange(b0, b1))
                c = ctf_2d(sub, self.apix, self.P).reshape(b1 - b0, -1)[:, self._sel].astype(np.float64)
                if phase_flipped:
                    c = np.abs(c)
            vals = F * (c * self._mult)
            wts = c * c * self._mult
            for R in self.sym_ops:
                self._scatter(rotations[b0:b1] @ R, vals, wts)
            if on_pass is not None:
                on_pass(b1 - b0)
        self.count += k

    def _slices(self, images: np.ndarray, origins_px: np.ndarray) -> np.ndarray:
        """Padded, centred FT samples (b, S) complex128 of the images."""
        b, n, P = images.shape[0], self.box, self.P
        padded = np.zeros((b, P, P), dtype=np.float32)
        o = P // 2 - n // 2
        padded[:, o:o + n, o:o + n] = images
        F = sfft.rfft2(sfft.ifftshift(padded, axes=(-2, -1)), workers=cpu_threads()).reshape(b, -1)[:, self._sel]
        # Centre: move content by +origin, g(p) = f(p − origin) ⇔ F·exp(−2πi k·origin/P).
        ph = (-2.0 * np.pi / P) * (origins_px[:, 0:1] * self._kx + origins_px[:, 1:2] * self._ky)
        return F.astype(np.complex128) * np.exp(1j * ph)

    def _scatter(self, A: np.ndarray, vals: np.ndarray, wts: np.ndarray) -> None:
        P, nx = self.P, self.nx
        A = A.astype(np.float32)
        # 3-D frequency (x, y, z) of sample (kx, ky): Aᵀ (kx, ky, 0) = kx·A[0] + ky·A[1].
        qx = self._kx * A[:, 0, 0:1] + self._ky * A[:, 1, 0:1]
        # Friedel: F(−q) = conj F(q) keeps every sample in the x ≥ 0 half.
        sgn = np.where(qx < 0, np.float32(-1), np.float32(1))
        qx *= sgn
        qy = (self._kx * A[:, 0, 1:2] + self._ky * A[:, 1, 1:2]) * sgn
        qz = (self._kx * A[:, 0, 2:3] + self._ky * A[:, 1, 2:3]) * sgn
        v = (vals.real + 1j * (vals.imag * sgn)).ravel()
        w = wts.ravel()
        x0, y0, z0 = np.floor(qx), np.floor(qy), np.floor(qz)
        fx, fy, fz = (qx - x0).ravel(), (qy - y0).ravel(), (qz - z0).ravel()
        # Accumulator layout (P+1, P+1, nx): index j on z and y is frequency j − P/2 (no wrapping).
        x0 = x0.astype(np.int64).ravel()
        y0 = (y0.astype(np.int64).ravel() + P // 2) * nx
        z0 = (z0.astype(np.int64).ravel() + P // 2) * ((P + 1) * nx)
        gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
        for dz, wz in ((0, gz), (1, fz)):
            zi = z0 + dz * ((P + 1) * nx)
            for dy, wy in ((0, gy), (1, fy)):
                wzy = wz * wy
                zyi = zi + (y0 + dy * nx)
                for dx, wx in ((0, gx), (1, fx)):
                    tw = wzy * wx
                    idx = zyi + (x0 + dx)
                    # ufunc.at (fast in numpy >= 1.25) beats bincount: no full-volume temporaries.
                    np.add.at(self.data, idx, v * tw)
                    np.add.at(self.weight, idx, w * tw)

    # ------------------------------------------------------------------ combination
    def merge(self, other: "Reconstructor") -> None:
        """Add another reconstructor's sums (same box, pad, apix, symmetry)."""
        if other.P != self.P or other.box != self.box:
            raise ValueError("cannot merge reconstructors of different geometry")
        self.data += other.data
        self.weight += other.weight
        self.count += other.count

    def _sums(self, acc: np.ndarray) -> np.ndarray:
        """Accumulator → (P, P, P//2+1) rfft grid in FFT order (frequency ±P/2 folded together)."""
        P = self.P
        a = acc.reshape(P + 1, P + 1, self.nx)[:, :, : P // 2 + 1].copy()
        a[0] += a[P]
        a[:, 0] += a[:, P]
        return np.fft.ifftshift(a[:P, :P], axes=(0, 1))

    def finish(self, regularisation: float = 0.01) -> np.ndarray:
        """The reconstructed map, float32 (box, box, box).

        Each voxel's data is divided by (weight + regularisation × mean weight of its shell), so
        voxels with weight near 0 go to 0 instead of blowing up.
        """
        P, n = self.P, self.box
        D, W = self._sums(self.data), self._sums(self.weight)
        # Hermitian completion of the x = 0 plane: what landed at (z, y, 0) also belongs at (−z, −y, 0).
        mz = (-np.arange(P)) % P
        D0, W0 = D[:, :, 0].copy(), W[:, :, 0].copy()
        D[:, :, 0] = D0 + D0[mz][:, mz].conj()
        W[:, :, 0] = W0 + W0[mz][:, mz]
        shell = radial_index((P, P, P))
        inside = shell < P // 2
        m = P // 2
        cnt = np.bincount(shell[inside], minlength=m)
        mean_w = np.bincount(shell[inside], W[inside], m) / np.maximum(cnt, 1)
        reg = float(regularisation) * mean_w[np.minimum(shell, m - 1)]
        den = W + reg
        F = np.where(inside & (den > 0), D / np.where(den > 0, den, 1.0), 0.0)
        vol = sfft.fftshift(sfft.irfftn(F, s=(P, P, P), workers=cpu_threads()))
        o = P // 2 - n // 2
        vol = vol[o:o + n, o:o + n, o:o + n]
        # Gridding correction: trilinear interpolation ⇔ sinc² per axis in real space.
        c = np.sinc((np.arange(n) - n // 2) / P) ** 2
        vol = vol / (c[:, None, None] * c[None, :, None] * c[None, None, :])
        return vol.astype(np.float32)


# ---------------------------------------------------------------------- half maps from a table
def _reconstruct_one(table, idx, box, apix, sym, pad, chunk, desc) -> np.ndarray:
    from .io.stacks import iter_images  # lazy: keep the Reconstructor usable on its own
    from .progress import progress

    rec = Reconstructor(box, apix, pad=pad, sym=sym)
    bar = progress(total=len(idx), desc=desc, unit="img")
    for rows, images in iter_images(table, idx, min(chunk, READ_BLOCK)):
        rows = np.asarray(rows)
        rec.insert(images, table.rotation[rows], table.origin[rows], table.ctf.subset(rows), table.phase_flipped,
                   on_pass=bar.update)
    bar.close()
    return rec.finish()


def reconstruct_halves(table, sym: str = "C1", pad: float = 2, chunk: int = 20000, workers: Optional[int] = None,
                       indices=None, desc: str = "") -> HalfPair:
    """Reconstruct the two gold-standard half maps of ``table``: HalfPair of float32 volumes.

    ``indices`` restricts to those rows; ``workers`` > 1 reconstructs the halves in two parallel
    (spawned) processes; the default does so when ≥ 2 CPU threads may be used (gmmcore.resources) and
    there are ≥ 2000 particles.  As with
    any spawned process pool, a script calling this at import time needs an
    ``if __name__ == "__main__":`` guard.  ``desc`` prefixes the progress reports.
    """
    label = (desc + " " if desc else "") + "half {} reconstruction"
    sub = table if indices is None else table.subset(indices)
    box, apix = check_geometry(sub)
    symmetry_matrices(sym)  # validate early (InputError naming --sym)
    parts = check_split(sub)
    rows = np.arange(len(table)) if indices is None else np.arange(len(table))[indices]
    parts = parts.map(lambda h, r: rows[r])
    if workers is None:  # a worker process costs ~1-2 s to start: only worth it for larger sets
        workers = 2 if cpu_threads() >= 2 and rows.size >= _PARALLEL_MIN_PARTICLES else 1
    if workers <= 1:
        return parts.map(lambda h, idx: _reconstruct_one(table, idx, box, apix, sym, pad, chunk, label.format(h)))
    import multiprocessing as mp

    # Each worker gets only its half's rows (a smaller pickle); its indices refer to that subset.
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as ex:
        slim = table.slim()
        futs = parts.map(lambda h, idx: ex.submit(_reconstruct_one, slim.subset(idx), np.arange(idx.size), box, apix,
                                                  sym, pad, chunk, label.format(h)))
        return futs.map(lambda h, f: f.result())
