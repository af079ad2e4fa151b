"""Direct Fourier inversion: the one reconstructor, and the two half maps of a particle table.

Each image is padded ``pad``× (zero padding, image centre N//2 at padded centre P//2), centred by
its origin (Fourier phase shift by +origin), Fourier transformed, and its samples within the
original Nyquist radius are inserted into a 3-D rfft volume of the padded box at Aᵀ(kx, ky, 0)
(central-slice theorem for I(p) = ∫V(Aᵀp)dz) with trilinear weights.  The volume accumulates
data·c and weight·c², c = |CTF| for phase-flipped images (CTF for raw images), as one float64
record (data.real, data.imag, weight) per voxel, stored in bricks of 8³ voxels (:class:`Bricks`),
by the compiled kernel (:mod:`gmmcore.insertion`) or by SciPy's compiled sparse kernel
(:func:`scatter_add`; insertion is bound by memory traffic, so a voxel's three sums share a cache
line and a plane's neighbouring voxels share bricks).  With symmetry each slice is inserted at A·R
for every operator R of the group.  ``finish`` divides data by
(weight + regulariser), inverse transforms, divides by the real-space transform of the trilinear
kernel (sinc² per axis) and crops to the box.

The two half sets are independent, so :func:`reconstruct_halves` reconstructs them in two worker
processes (spawned, so a parent that has initialised TensorFlow is safe); each is sent its half
compactly (:class:`HalfParticles`: stack codes and image indices, poses, CTF — no name strings,
and the parent keeps no copy) and streams its own images chunk by chunk, so memory does not grow
with the number of particles beyond these per-particle numbers.  Every path — in this process, on a
device, in a worker, as work units — inserts through the same loop over a :class:`HalfParticles`.

A backend may insert on its device (``backend.insertion_kernel(geometry)``, e.g. JAX on a GPU): the
geometry, the CTF formula (:func:`gmmcore.ctf.ctf_formula`) and ``finish`` stay here; the kernel
pads, transforms, centres, weights and scatters the same samples into the same sums (handed over
row-major by its ``sums``; the CPU accumulator itself is bricked, :class:`Bricks`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import scipy.fft as sfft

from .ctf import ctf_columns, ctf_formula, ctf_image_terms, phase_flip
from .errors import InputError
from .fourier import freq_index, radial_index
from .insertion import kernel as compiled_insertion
from .particles import CTFParams, HalfPair, check_geometry, check_split, one_value
from .resources import cpu_threads
from .symmetry import symmetry_matrices

_PARALLEL_MIN_PARTICLES = 2000  # below this, reconstruct_halves runs the halves one after the other
_NONE, _NO_TERMS = np.zeros((0, 0)), np.zeros((0, 7))  # the compiled kernel's "not given"
_ENTRIES_PER_PASS = 3_000_000  # scatter entries per bincount pass (memory knob, not a result knob)
READ_BLOCK = 1024  # images read at once: memory is bounded by this, not by the dataset or --chunk


def scatter_add(acc: np.ndarray, index: np.ndarray, records: np.ndarray, scale: np.ndarray) -> None:
    """acc[index[i]] += records[i]·scale[i] for i in order, in place (repeated indices accumulate).

    ``acc`` (V, c) and ``records`` (m, c) C-contiguous float64, ``index`` (m,) int64, ``scale`` (m,)
    float64.  Each product is rounded, then added, in the order of ``index`` — the same sums, bit for
    bit, as ``np.add.at(acc[:, j], index, records[:, j] * scale)`` column by column — in one pass of
    SciPy's compiled sparse kernel (y += A·x, A holding ``scale[i]`` at (index[i], i)), which touches
    each accumulator record once instead of once per column.
    """
    m, c = records.shape
    try:
        from scipy.sparse import _sparsetools
    except ImportError:  # pragma: no cover - a SciPy without its compiled sparse tools
        for j in range(c):
            np.add.at(acc[:, j], index, records[:, j] * scale)
        return
    _sparsetools.csc_matvecs(acc.shape[0], m, c, _column_starts(m), index, scale, records.reshape(-1), acc.reshape(-1))


_STARTS = np.arange(1, dtype=np.int64)


def _column_starts(m: int) -> np.ndarray:
    """0..m (int64): the column pointers of a sparse matrix with one entry per column (cached)."""
    global _STARTS
    if _STARTS.size < m + 1:
        _STARTS = np.arange(max(m + 1, 2 * _STARTS.size), dtype=np.int64)
    return _STARTS[: m + 1]


def cropped_irfftn(F: np.ndarray, P: int, n: int) -> np.ndarray:
    """``fftshift(irfftn(F, s=(P, P, P)))[o:o+n, o:o+n, o:o+n]``, o = P//2 − n//2, bit for bit, without
    the voxels that are cropped away.

    SciPy's irfftn transforms z, then y (complex, unscaled), then x (complex → real, scaled by
    1/P³); the same one-dimensional transforms in the same order, keeping after each axis only the
    planes that survive the crop, give the same numbers for a fraction of the work (the last scaling
    is an exact multiply of each output, done here afterwards).
    """
    keep = (np.arange(P // 2 - n // 2, P // 2 - n // 2 + n) + P // 2) % P  # shifted crop → FFT order
    w = cpu_threads()
    G = sfft.ifft(F, axis=0, norm="forward", workers=w)[keep]
    G = sfft.ifft(G, axis=1, norm="forward", workers=w)[:, keep]
    vol = sfft.irfft(G, n=P, axis=2, norm="forward", workers=w)[:, :, keep]
    return vol * (1.0 / (P * P * P))


class Bricks:
    """Layout of a (nz, ny, nx) grid of records in memory: bricks of b³ voxels, each brick's voxels
    (z, y, x) row-major, the bricks row-major; the grid is padded to whole bricks.

    The row of voxel (z, y, x) is ``tz[z] + ty[y] + tx[x]`` (int64 tables): a trilinear scatter
    touches a few bricks per sample and neighbouring samples land in the same bricks, where a
    row-major grid sends each step along z or y a plane or a row away.
    """

    def __init__(self, shape, b: int = 8):
        self.shape, self.b = tuple(int(n) for n in shape), int(b)
        self.blocks = tuple(-(-n // self.b) for n in self.shape)
        b3 = self.b ** 3
        nby, nbx = self.blocks[1], self.blocks[2]

        def table(n: int, stride: int, inner: int) -> np.ndarray:
            j = np.arange(n, dtype=np.int64)
            return (j // self.b) * stride + (j % self.b) * inner

        self.tz = table(self.shape[0], nby * nbx * b3, self.b * self.b)
        self.ty = table(self.shape[1], nbx * b3, self.b)
        self.tx = table(self.shape[2], b3, 1)
        self.size = int(np.prod(self.blocks)) * b3

    def _bricked(self, acc: np.ndarray) -> np.ndarray:
        """(nbz, b, nby, b, nbx, b, c) view of ``acc`` (size, c): the grid padded to whole bricks."""
        (nbz, nby, nbx), b = self.blocks, self.b
        return acc.reshape(nbz, nby, nbx, b, b, b, -1).transpose(0, 3, 1, 4, 2, 5, 6)

    def grid(self, acc: np.ndarray) -> np.ndarray:
        """The records (size, c) in the grid's row-major layout: a (nz, ny, nx, c) copy."""
        (nbz, nby, nbx), b = self.blocks, self.b
        nz, ny, nx = self.shape
        return self._bricked(acc).reshape(nbz * b, nby * b, nbx * b, -1)[:nz, :ny, :nx]

    def add(self, acc: np.ndarray, grid: np.ndarray) -> None:
        """acc += ``grid`` (nz, ny, nx, c) records in the grid's row-major layout, in place."""
        (nbz, nby, nbx), b = self.blocks, self.b
        nz, ny, nx = self.shape
        padded = np.zeros((nbz * b, nby * b, nbx * b, acc.shape[1]))
        padded[:nz, :ny, :nx] = grid
        self._bricked(acc)[...] += padded.reshape(nbz, b, nby, b, nbx, b, -1)


class Reconstructor:
    """Accumulate images into a padded 3-D Fourier volume; ``finish`` gives the map.

    ``box`` (pixels) and ``apix`` (Å/pixel) of the images; ``pad`` the padding factor; ``sym`` a
    point group (C1, Cn, Dn, T, O, I).
    """

    def __init__(self, box: int, apix: float, pad: float = 2, sym: str = "C1", backend=None):
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
        # Sums on a (P+1, P+1, nx) grid, z/y index j ↔ frequency j − P/2 (see _scatter, _folded).
        # One record (data.real, data.imag, weight) float64 per voxel: a sample's data and weight
        # land on the same cache line (insertion is bound by memory traffic, not arithmetic); the
        # records are stored in bricks (Bricks: rows tz[z] + ty[y] + tx[x]).
        self.layout = Bricks((P + 1, P + 1, self.nx))
        self.acc = np.zeros((self.layout.size, 3), dtype=np.float64)
        self.count = 0
        # 2-D samples used: the padded rfft grid within the original Nyquist radius (P/2).
        ky, kx = freq_index((P, P))
        ky, kx = np.broadcast_arrays(ky, kx)
        r = np.sqrt(kx.astype(float) ** 2 + ky.astype(float) ** 2)
        sel = r < P / 2
        self._sel = np.flatnonzero(sel)
        self._kx = kx[sel].astype(np.float32)
        self._ky = ky[sel].astype(np.float32)
        # Frequencies (1/Å) of the samples, computed as ctf_2d computes them on the padded grid.
        self._fx = (kx.ravel()[self._sel] / (P * self.apix))
        self._fy = (ky.ravel()[self._sel] / (P * self.apix))
        self._u2, self._azim = self._fx ** 2 + self._fy ** 2, np.arctan2(self._fy, self._fx)  # as ctf_formula
        # The kx = 0 column holds each Friedel pair twice: half weight each.
        self._mult = np.where(self._kx == 0, 0.5, 1.0)
        self._kernel = None
        make = getattr(backend, "insertion_kernel", None)
        if make is not None:
            self._kernel = make(self)
            if self._kernel is not None:  # the sums live on the device
                self.acc = None

    @property
    def device(self) -> bool:
        """True when a backend's kernel inserts (and holds the sums) on its device."""
        return self._kernel is not None

    ctf_formula = staticmethod(ctf_formula)  # what a device kernel evaluates (one CTF implementation)

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
        if ctf is not None and not phase_flipped and self._kernel is None:
            images = phase_flip(images, ctf, self.apix)
            phase_flipped = True
        k, n = images.shape[0], self.box
        if images.shape[1:] != (n, n):
            raise ValueError(f"images of shape {images.shape[1:]} for a box of {n}")
        rotations = np.asarray(rotations, dtype=np.float64).reshape(k, 3, 3)
        origins_px = np.asarray(origins_A, dtype=np.float64).reshape(k, 2) / self.apix
        if self._kernel is not None:
            self._kernel.insert(images, rotations, origins_px, None if ctf is None else ctf_columns(ctf), phase_flipped)
            self.count += k
            return
        S = self._sel.size
        per = max(1, _ENTRIES_PER_PASS // (8 * S))
        compiled = compiled_insertion()
        for b0 in range(0, k, per):
            b1 = min(k, b0 + per)
            F = self._transforms(images[b0:b1])
            columns = None if ctf is None else ctf_columns(ctf.subset(np.arange(b0, b1)))
            if compiled is not None and columns is not None and phase_flipped and not np.any(columns[:, 7]):
                # |CTF| evaluated in the kernel, only at the samples (no B-factor: NumPy's exp and
                # libm's may differ in the last bit, so an envelope is computed by _ctf below)
                terms, c = np.concatenate(ctf_image_terms(*(columns[:, j:j + 1] for j in range(7))), axis=1), _NONE
            else:
                terms = _NO_TERMS
                c = np.ones((b1 - b0, S)) if columns is None else self._ctf(columns)
                if columns is not None and phase_flipped:
                    c = np.abs(c)
            if compiled is not None:  # centres, weights and inserts in one pass (gmmcore.insertion)
                A = (rotations[b0:b1, None] @ np.asarray(self.sym_ops)[None]).astype(np.float32)
                lay = self.layout
                compiled(self.acc, lay.tz, lay.ty, lay.tx, self._kx, self._ky, A, F, origins_px[b0:b1], c,
                         self._mult, self.P, terms, self._u2, self._azim)
            else:
                vals = self._centred(F, origins_px[b0:b1]) * (c * self._mult)
                wts = c * c * self._mult
                for R in self.sym_ops:
                    self._scatter(rotations[b0:b1] @ R, vals, wts)
            if on_pass is not None:
                on_pass(b1 - b0)
        self.count += k

    def _ctf(self, columns: np.ndarray) -> np.ndarray:
        """CTF (b, S) float64 of the particles with :func:`ctf_columns` ``columns`` (b, 8) at the
        samples used — the values of ``ctf_2d`` on the padded grid (float32), evaluated only there."""
        return ctf_formula(*(columns[:, j:j + 1] for j in range(8)), self._fx, self._fy).astype(np.float32).astype(
            np.float64)

    def _transforms(self, images: np.ndarray) -> np.ndarray:
        """Padded FT samples (b, S) complex64 of the images (not yet centred)."""
        b, n, P = images.shape[0], self.box, self.P
        # rfft2(ifftshift(zero-padded image)) as SciPy computes it — x transforms, then y — but the
        # x transform only of the n rows that are not zero (the others transform to zeros).
        pos = (np.arange(n) - n // 2) % P  # where image row/column j lands in the ifftshifted padded grid
        rows = np.zeros((b, n, P), dtype=np.float32)
        rows[:, :, pos] = images
        X = sfft.rfft(rows, axis=-1, workers=cpu_threads())
        F = np.zeros((b, P, P // 2 + 1), dtype=X.dtype)
        F[:, pos] = X
        return sfft.fft(F, axis=-2, workers=cpu_threads(), overwrite_x=True).reshape(b, -1)[:, self._sel]

    def _centred(self, F: np.ndarray, origins_px: np.ndarray) -> np.ndarray:
        """Samples centred, complex128: content moved by +origin, g(p) = f(p − origin) ⇔ F·exp(−2πi k·origin/P)."""
        ph = (-2.0 * np.pi / self.P) * (origins_px[:, 0:1] * self._kx + origins_px[:, 1:2] * self._ky)
        return F.astype(np.complex128) * np.exp(1j * ph)

    def _scatter(self, A: np.ndarray, vals: np.ndarray, wts: np.ndarray) -> None:
        """Trilinear insertion of ``vals`` (b, S) complex128 / ``wts`` (b, S) at Aᵀ(kx, ky, 0) in NumPy
        (the path without numba; :mod:`gmmcore.insertion` does the same, compiled)."""
        P = self.P
        A = A.astype(np.float32)
        # 3-D frequency (x, y, z) of sample (kx, ky): Aᵀ (kx, ky, 0) = kx·A[0] + ky·A[1].
        qx = self._kx * A[:, 0, 0:1] + self._ky * A[:, 1, 0:1]
        # Friedel: F(−q) = conj F(q) keeps every sample in the x ≥ 0 half.
        sgn = np.where(qx < 0, np.float32(-1), np.float32(1))
        qx *= sgn
        qy = (self._kx * A[:, 0, 1:2] + self._ky * A[:, 1, 1:2]) * sgn
        qz = (self._kx * A[:, 0, 2:3] + self._ky * A[:, 1, 2:3]) * sgn
        x0, y0, z0 = np.floor(qx), np.floor(qy), np.floor(qz)
        fx, fy, fz = (qx - x0).ravel(), (qy - y0).ravel(), (qz - z0).ravel()
        # Accumulator grid (P+1, P+1, nx): index j on z and y is frequency j − P/2 (no wrapping);
        # the row of voxel (z, y, x) is tz[z] + ty[y] + tx[x] (Bricks), per axis for each corner.
        lay = self.layout
        jx = x0.astype(np.int64).ravel()
        jy = y0.astype(np.int64).ravel() + P // 2
        jz = z0.astype(np.int64).ravel() + P // 2
        rows_x = (lay.tx[jx], lay.tx[jx + 1])
        rows_y = (lay.ty[jy], lay.ty[jy + 1])
        rows_z = (lay.tz[jz], lay.tz[jz + 1])
        # Records (data.real, data.imag, weight) of the samples; Friedel flips the imaginary part.
        rec = np.empty((jx.size, 3))
        rec[:, 0] = vals.real.ravel()
        rec[:, 1] = (vals.imag * sgn).ravel()
        rec[:, 2] = wts.ravel()
        gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
        idx, zy = np.empty_like(jx), np.empty_like(jx)
        for dz, wz in ((0, gz), (1, fz)):
            for dy, wy in ((0, gy), (1, fy)):
                wzy = wz * wy
                np.add(rows_z[dz], rows_y[dy], out=zy)
                for dx, wx in ((0, gx), (1, fx)):
                    np.add(zy, rows_x[dx], out=idx)
                    scatter_add(self.acc, idx, rec, (wzy * wx).astype(np.float64))

    # ------------------------------------------------------------------ combination
    def merge(self, other: "Reconstructor") -> None:
        """Add another reconstructor's sums (same box, pad, apix, symmetry)."""
        if other.P != self.P or other.box != self.box:
            raise ValueError("cannot merge reconstructors of different geometry")
        data, weight = other.sums()
        if self._kernel is not None:
            self._kernel.add(data, weight)
        else:
            grid = np.stack([data.real, data.imag, weight], axis=1).reshape(self.layout.shape + (3,))
            self.layout.add(self.acc, grid)
        self.count += other.count

    def sums(self):
        """(data, weight): the accumulated sums on the host, flat (P+1)·(P+1)·nx (row-major z, y, x),
        complex128 / float64."""
        if self._kernel is not None:
            return self._kernel.sums()
        g = self.layout.grid(self.acc)
        data = np.empty(g.shape[:3], np.complex128)
        data.real, data.imag = g[..., 0], g[..., 1]
        return data.ravel(), g[..., 2].ravel()

    def _folded(self):
        """(D, W): the sums on the (P, P, P//2+1) rfft grid in FFT order, complex128 / float64, the
        frequencies ±P/2 of z and y folded together (the z fold first, then y, as a[0] += a[P];
        a[:, 0] += a[:, P] on the (P+1, P+1) grid), read straight from the accumulator's layout."""
        P, h = self.P, self.P // 2 + 1
        if self._kernel is not None:  # the device's sums, row-major
            data, weight = self._kernel.sums()
            acc, lay = np.stack([data.real, data.imag, weight], axis=1), Bricks(self.layout.shape, 1)
        else:
            acc, lay = self.acc, self.layout
        shifted = (np.arange(P) + P // 2) % P  # ifftshift: output j holds grid index shifted[j]
        zero = P // 2  # the output index of grid index 0
        records = acc.view(np.dtype((np.void, acc.itemsize * 3))).ravel()  # one item per voxel: fast take

        def at(rows: np.ndarray) -> np.ndarray:  # the records at those rows, (..., 3) float64
            return np.take(records, rows).view(np.float64).reshape(rows.shape + (3,))

        tx, ty = lay.tx[:h], lay.ty[shifted, None]
        D, W = np.empty((P, P, h), np.complex128), np.empty((P, P, h))
        for z0 in range(0, P, 16):  # a few planes at a time: no full-size temporaries
            r = at(lay.tz[shifted[z0:z0 + 16], None, None] + ty + tx)
            D.real[z0:z0 + 16], D.imag[z0:z0 + 16], W[z0:z0 + 16] = r[..., 0], r[..., 1], r[..., 2]

        def add(d, w, r):  # (d, w) += the records r, component by component
            d.real += r[..., 0]
            d.imag += r[..., 1]
            w += r[..., 2]

        add(D[zero], W[zero], at(lay.tz[P] + ty + tx))  # z: index 0 += index P (all y < P)
        row_p = at(lay.tz[shifted, None] + lay.ty[P] + tx)  # (z, y = P), z < P
        row_p[zero] += at(lay.tz[P] + lay.ty[P] + tx)  # ... the z fold of (0, P) first
        add(D[:, zero], W[:, zero], row_p)  # y: index 0 += index P
        return D, W

    def finish(self, regularisation: float = 0.01) -> np.ndarray:
        """The reconstructed map, float32 (box, box, box).

        Each voxel's data is divided by (weight + regularisation × mean weight of its shell), so
        voxels with weight near 0 go to 0 instead of blowing up.
        """
        P, n = self.P, self.box
        D, W = self._folded()
        # Hermitian completion of the x = 0 plane: what landed at (z, y, 0) also belongs at (−z, −y, 0).
        mz = (-np.arange(P)) % P
        D0, W0 = D[:, :, 0].copy(), W[:, :, 0].copy()
        D[:, :, 0] = D0 + D0[mz][:, mz].conj()
        W[:, :, 0] = W0 + W0[mz][:, mz]
        shell = radial_index((P, P, P))
        m = P // 2  # shells 0..m−1 are inside
        # Per shell, over every voxel: bins below m hold the inside voxels, in the same order.
        cnt = np.bincount(shell.ravel(), minlength=m)[:m]
        mean_w = np.bincount(shell.ravel(), W.ravel(), minlength=m)[:m] / np.maximum(cnt, 1)
        reg = float(regularisation) * mean_w[np.minimum(np.arange(shell.max() + 1), m - 1)]  # per shell
        den = W + reg[shell]
        keep = (shell < m) & (den > 0)
        # D / den as NumPy divides a complex by a real — the product by the reciprocal, bit for bit.
        F = np.zeros(D.shape, D.dtype)
        np.multiply(D, np.divide(1.0, den, out=np.zeros_like(den), where=keep), out=F, where=keep)
        vol = cropped_irfftn(F, P, n)
        # Gridding correction: trilinear interpolation ⇔ sinc² per axis in real space.
        c = np.sinc((np.arange(n) - n // 2) / P) ** 2
        vol = vol / (c[:, None, None] * c[None, :, None] * c[None, None, :])
        return vol.astype(np.float32)


# ---------------------------------------------------------------------- half maps from a table
def reconstruct_halves(table, sym: str = "C1", pad: float = 2, chunk: int = 20000, workers: Optional[int] = None,
                       indices=None, executor=None, backend=None, desc: str = "") -> HalfPair:
    """Reconstruct the two gold-standard half maps of ``table``: HalfPair of float32 volumes.

    ``indices`` restricts to those rows; ``workers`` > 1 reconstructs the halves in two parallel
    (spawned) processes; the default does so when ≥ 2 CPU threads may be used (gmmcore.resources) and
    there are ≥ 2000 particles.  As with
    any spawned process pool, a script calling this at import time needs an
    ``if __name__ == "__main__":`` guard.  ``desc`` prefixes the progress reports.  ``backend``: an
    array backend whose ``insertion_kernel`` inserts on its device (then the halves run one after
    the other in this process, on the device).

    ``executor`` (:mod:`gmmcore.parallel`) that runs units elsewhere: each half is cut into parts of
    ``chunk`` particles, each part's padded Fourier sums are one unit (:func:`partial_sums`), the
    sums are added in a fixed pairwise tree and finished once per half — the parts depend only on
    the table and ``chunk``, never on the number of workers.
    """
    if executor is not None and not executor.in_process:
        return _reconstruct_halves_units(table, sym, pad, chunk, indices, executor)
    label = (desc + " " if desc else "") + "half {} reconstruction"
    sub = table if indices is None else table.subset(indices)
    box, apix = check_geometry(sub)
    symmetry_matrices(sym)  # validate early (InputError naming --sym)
    local = check_split(sub)  # HalfPair of rows of sub
    rows = np.arange(len(table)) if indices is None else np.arange(len(table))[indices]
    parts = local.map(lambda h, r: rows[r])  # rows of table
    device = backend if backend is not None and getattr(backend, "device_reconstruction", lambda: False)() else None
    if workers is None:  # a worker process costs ~1-2 s to start: only worth it for larger sets
        workers = 2 if cpu_threads() >= 2 and rows.size >= _PARALLEL_MIN_PARTICLES else 1
    if device is not None or workers <= 1:  # here, one half after the other (on the device if it inserts)
        return parts.map(lambda h, idx: _half_map(HalfParticles.of(table, idx), box, apix, sym, pad, chunk,
                                                  label.format(h), device))
    from functools import partial

    from .parallel.spawned import run_spawned

    # Each worker is sent only what reconstructing its half needs — where its images are (stack
    # codes and indices, not name strings), poses, CTF — made and sent one half at a time; this
    # process keeps no copy while the workers run.
    del sub, local

    def sent(h: int) -> tuple:
        return HalfParticles.of(table, parts[h]), box, apix, sym, pad, chunk, label.format(h)

    return HalfPair(*run_spawned(_half_map, [partial(sent, 1), partial(sent, 2)]))


@dataclass
class HalfParticles:
    """What reconstructing a set of particles needs, compactly (sent to a worker process): where
    their images are (:class:`gmmcore.io.stacks.StackRefs`), rotations (k, 3, 3), origins (k, 2) Å,
    CTF (a column of one value travels as that value and arrives as a read-only view of it), and
    whether the images are phase-flipped."""

    refs: object
    rotation: np.ndarray
    origin: np.ndarray
    ctf: CTFParams
    phase_flipped: bool

    @classmethod
    def of(cls, table, rows: np.ndarray) -> "HalfParticles":
        """Rows ``rows`` of ``table`` (their stacks found: a missing one is an InputError here)."""
        from .io.stacks import stack_refs

        return cls(stack_refs(table, rows), table.rotation[rows], table.origin[rows], table.ctf.subset(rows),
                   bool(table.phase_flipped))

    def __getstate__(self) -> dict:
        """Pickled with each CTF column that holds one value (voltage, Cs, ...) as that value."""
        ctf = {f.name: getattr(self.ctf, f.name) for f in fields(CTFParams)}
        return {**self.__dict__, "ctf": {k: ("one", v1) if (v1 := one_value(v)) is not None else ("all", v)
                                         for k, v in ctf.items()}}

    def __setstate__(self, state: dict) -> None:
        n = len(state["rotation"])
        state["ctf"] = CTFParams(**{k: np.broadcast_to(v, (n,)) if how == "one" else v
                                    for k, (how, v) in state["ctf"].items()})
        self.__dict__.update(state)


def _sums(parts: HalfParticles, box: int, apix: float, sym: str, pad: float, chunk: int = READ_BLOCK,
          desc: Optional[str] = None, backend=None) -> Reconstructor:
    """The insertion loop of every reconstruction from particles: a Reconstructor holding the sums of
    ``parts``, their images streamed min(``chunk``, READ_BLOCK) at a time in the order
    :func:`gmmcore.io.stacks.iter_stack_images` reads them (by stack, then image index).  ``desc``
    labels a progress bar (None: none); ``backend`` may insert on its device."""
    from .io.stacks import iter_stack_images  # lazy: keep the Reconstructor usable on its own
    from .progress import progress

    rec = Reconstructor(box, apix, pad=pad, sym=sym, backend=backend)
    bar = None if desc is None else progress(total=len(parts.refs), desc=desc, unit="img")
    for pos, images in iter_stack_images(parts.refs, min(chunk, READ_BLOCK)):
        rec.insert(images, parts.rotation[pos], parts.origin[pos], parts.ctf.subset(pos), parts.phase_flipped,
                   on_pass=None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    return rec


def _half_map(parts: HalfParticles, box, apix, sym, pad, chunk, desc, backend=None) -> np.ndarray:
    """One half map of :func:`reconstruct_halves` (in this process or a spawned worker): float32
    (box, box, box)."""
    return _sums(parts, box, apix, sym, pad, chunk, desc, backend).finish()


# ---------------------------------------------------------------------- as work units
def partial_sums(part, box: int, apix: float, sym: str, pad: float) -> Reconstructor:
    """Work unit: a Reconstructor holding the sums of all particles of the table ``part``."""
    return _sums(HalfParticles.of(part, np.arange(len(part))), box, apix, sym, pad)


def added(a: Reconstructor, b: Reconstructor) -> Reconstructor:
    """A new Reconstructor with the sums of ``a`` and ``b`` (neither is changed: a unit may be rerun)."""
    if a.P != b.P or a.box != b.box:
        raise ValueError("cannot add reconstructors of different geometry")
    out = copy.copy(a)
    out.acc, out.count = a.acc + b.acc, a.count + b.count
    return out


def finished(rec: Reconstructor) -> np.ndarray:
    return rec.finish()


def _reconstruct_halves_units(table, sym, pad, chunk, indices, executor) -> HalfPair:
    from .io.stacks import worker_table
    from .parallel import Unit

    sub = table if indices is None else table.subset(indices)
    box, apix = check_geometry(sub)
    symmetry_matrices(sym)
    parts = check_split(sub)
    lean = worker_table(sub)
    chunk = max(1, int(chunk))
    groups = [[Unit(f"half {h} reconstruction part {j // chunk}", partial_sums,
                    (lean.subset(idx[j:j + chunk]), box, apix, sym, pad), uses_device=False)
               for j in range(0, idx.size, chunk)]
              for h, idx in parts.items()]
    maps = executor.map_reduce(groups, added, finished)
    return HalfPair(maps[0], maps[1])
