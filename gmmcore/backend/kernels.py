"""Array-library-free pieces of the alignment kernel shared by the backends (NumPy only).

The projector's transform of a projected Gaussian at μ (Å) on the cropped half-plane grid is
a·E(ky)·E(kx)·e^{−iθy}·e^{−iθx}, θ = 2π k μ / L, E(k) = exp(−2π²σ²(k/L)²).  Because cos is even and
sin odd in k, the rows −ky follow from the rows +ky: with the four real products over Gaussians

    P = Σ cy·cx,  T = Σ cy·sx,  R = Σ sy·cx,  Q = Σ sy·sx      (c = E·cos θ, s = E·sin θ, k ≥ 0)

the transform is M(+ky, kx) = (P − Q) − i(R + T) and M(−ky, kx) = (P + Q) + i(R − T).  So one real
product (2K × N)·(N × 2K), K = kmax + 1, gives the whole grid: half the multiply-adds of the
(2·ny × 2N)·(2N × nx) block product over all rows, and only k ≥ 0 phase tables.

* :class:`HermitianLayout` — where each pixel of the cropped grid sits in the flattened
  [M(+ky) rows; M(−ky) rows] layout (2K² values, then one zero).
* :class:`RingLayout` — the FRC's rings as a (nrings × maxlen) index table (zero-padded segments):
  ring sums are then a gather and a row sum, deterministic on every device; its inverse makes the
  gather's gradient a gather too (no scatter-add).
* :func:`batch_for_memory` — the ``--batch auto`` rule.
* :func:`in_micro_batches` — a CPU runs a large pose batch as consecutive batches of
  :data:`CPU_MICRO_BATCH` particles.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np


class HermitianLayout:
    """Index of each FRC pixel of a :class:`gmmcore.grids.FourierGrid` in the Hermitian layout."""

    def __init__(self, grid):
        self.K = K = int(grid.kmax) + 1
        ny, nx = grid.shape
        assert nx == K and ny == 2 * K - 1, "a cropped half-plane grid is expected"
        row = grid.pix // nx
        kx = grid.pix % nx
        ky = row - grid.kmax
        self.size = 2 * K * K  # values before the trailing zero
        self.index = np.where(ky >= 0, ky * K + kx, K * K + (-ky) * K + kx).astype(np.int32)


class RingLayout:
    """FRC rings as zero-padded segments: ``model_index`` (nrings, maxlen) into the Hermitian layout
    (its sentinel is the trailing zero, index 2K²); ``particle_index`` into the flattened cropped
    grid ny·nx (sentinel ny·nx: a zero appended by the caller)."""

    def __init__(self, grid, layout: HermitianLayout):
        ring = grid.ring
        nr = int(grid.nrings)
        counts = np.bincount(ring, minlength=nr)
        self.maxlen = int(counts.max()) if len(counts) else 1
        ny, nx = grid.shape
        self.model_index = np.full((nr, self.maxlen), layout.size, np.int32)
        self.particle_index = np.full((nr, self.maxlen), ny * nx, np.int32)
        order = np.argsort(ring, kind="stable")
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = np.arange(len(ring)) - start[ring[order]]
        self.model_index[ring[order], pos] = layout.index[order]
        self.particle_index[ring[order], pos] = grid.pix[order]
        self.counts = counts
        # the gather's transpose as a gather: each layout value sits in at most one ring slot, so
        # its cotangent is that slot's (``model_inverse`` into the nrings·maxlen slots, sentinel
        # nrings·maxlen: a zero appended by the caller) — the same numbers as a scatter-add, without one
        self.model_inverse = np.full(layout.size + 1, nr * self.maxlen, np.int32)
        slots = np.flatnonzero(self.model_index.ravel() != layout.size)
        self.model_inverse[self.model_index.ravel()[slots]] = slots


# Bytes per particle of the pose loop, in units of 4·N·K (a float32 N×K table): the enveloped
# tables X and Y (2 × 2 units), their cotangents (4) and what the step keeps alive besides.  XLA's
# memory analysis of the compiled JAX loop (benchmarks/bench_align.py: ``compiled_MB``, case i)
# grows by 2.34 MB per particle = 6.0 units; TensorFlow without XLA keeps more intermediates, so
# the rule uses twice that.
TABLES_PER_PARTICLE = 12


def bytes_per_particle(n_gaussians: int, grid) -> int:
    """Working memory of one particle in the pose loop (bytes), the ``--batch auto`` model."""
    K = int(grid.kmax) + 1
    ny, nx = grid.shape
    return int(4 * (TABLES_PER_PARTICLE * n_gaussians * K + 16 * ny * nx))


# On a CPU the step's speed per particle does not grow past small batches and drops at large ones
# when other processes share the caches (benchmarks/bench_align.py): the pose optimisers run a
# larger batch as consecutive micro-batches of CPU_MICRO_BATCH particles (TensorFlow: 16, see
# tf.TF_CPU_MICRO_BATCH).  ``--batch auto`` takes 16 (CPU_BATCH_CAP): a single micro-batch of 8 per
# call measured ~17 % slower with TensorFlow when each call started on caches another kernel had
# just used; a larger batch only pads more particles at the end of a chunk.
CPU_MICRO_BATCH = 8
CPU_BATCH_CAP = 2 * CPU_MICRO_BATCH


def in_micro_batches(step: Callable[..., Sequence[np.ndarray]], size: Optional[int],
                     **arrays: np.ndarray) -> tuple:
    """``step(**arrays)`` on consecutive slices of ``size`` rows (axis 0), the last slice padded by
    repeating its last row so every call has the same shape (one compiled function), its outputs
    (arrays with the rows on axis 0) concatenated and cut to the input's rows.  One call when
    ``size`` is None or not below the rows.  A particle's result is then the same bits whatever the
    batch, as long as the batch is at least ``size``."""
    n = len(next(iter(arrays.values())))
    if not size or n <= size:
        return tuple(step(**arrays))
    parts = []
    for i0 in range(0, n, size):
        sl = {key: np.asarray(x[i0:i0 + size]) for key, x in arrays.items()}
        pad = size - len(next(iter(sl.values())))
        if pad:
            sl = {key: np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for key, x in sl.items()}
        parts.append(tuple(step(**sl)))
    return tuple(np.concatenate([p[j] for p in parts])[:n] for j in range(len(parts[0])))


def host_free_bytes() -> Optional[float]:
    """MemAvailable of the host (bytes), None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return None


def batch_for_memory(n_gaussians: int, grid, free_bytes: Optional[float], limit: int = 4096,
                     fraction: float = 0.5, unknown: int = 16) -> int:
    """``--batch auto``: the largest power of two B ≤ ``limit`` with
    B · :func:`bytes_per_particle` ≤ ``fraction`` × free device memory (the other half is left to
    the particle data, the GMM fit and the allocator's fragmentation); ``unknown`` when the free
    memory cannot be read.  CPUs pass ``limit`` = :data:`CPU_BATCH_CAP`."""
    if free_bytes is None or not np.isfinite(free_bytes) or free_bytes <= 0:
        return int(unknown)
    per = bytes_per_particle(n_gaussians, grid)
    b = int(fraction * free_bytes // max(per, 1))
    if b < 1:
        return 1
    return int(min(limit, 2 ** int(np.floor(np.log2(b)))))
