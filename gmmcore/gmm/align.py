"""Streamed local pose refinement of particles against a GMM (one half set at a time).

Particles are read in chunks (memory does not grow with the dataset); each finished chunk is saved
through a :class:`ChunkCheckpoints` so a killed run resumes at the chunk that was in flight.  Raw
(not phase-flipped) particles are flipped on the fly by multiplying their transform by sign(CTF).

The optimiser itself is the backend's (:meth:`gmmcore.backend.Backend.pose_optimizer`); this
module batches particles for it (fixed, padded batch size so one compilation serves a run) and
chooses the FRC ring weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..backend import FRCObjective, PoseSettings, get_backend
from ..ctf import ctf_2d
from ..fourier import ft
from ..grids import FourierGrid, normalised_ring_weights, ssnr_data_scale, ssnr_ring_weights
from ..io.stacks import iter_images
from ..particles import ParticleTable, Poses
from ..progress import progress
from ..safewrite import atomic_path
from .model import GMM

SUB_BATCH = 1024  # particles whose transforms are held at once


def particle_transforms(images: np.ndarray, table: ParticleTable, rows: np.ndarray, grid: FourierGrid) -> np.ndarray:
    """Centred images (k, n, n) of particles ``rows`` → cropped, phase-flipped transforms (k, ny, nx)."""
    F = ft(np.asarray(images, np.float32), 2)
    if not table.phase_flipped:
        F *= np.sign(ctf_2d(table.ctf.subset(rows), grid.apix, grid.box))
    return grid.crop(F)


def orthonormalise(R: np.ndarray) -> np.ndarray:
    """Nearest rotation matrices (SVD) of (k, 3, 3) float matrices."""
    u, _, vt = np.linalg.svd(R)
    return u @ vt


class BatchedPoseOptimizer:
    """Runs a backend pose optimiser over any number of particles in batches of a fixed size
    (the last one padded), so one compilation serves a whole run.  Results do not depend on the
    batch size: every particle's objective and Adam state are its own."""

    def __init__(self, objective, settings: PoseSettings, batch: int = 16, backend=None):
        self.batch = int(batch)
        self.settings = settings
        self._opt = (backend or get_backend()).pose_optimizer(objective, settings)

    def refine(self, rotations: np.ndarray, origins_A: np.ndarray, on_batch=None, **per_particle: np.ndarray):
        """rotations (k,3,3), origins (k,2) Å, per-particle inputs of the objective (k, ...) →
        (rotations (k,3,3) float64, origins (k,2) float64, score (k,) float32, start score (k,)).
        ``on_batch(n)`` is called after each batch of n particles (progress)."""
        k = len(rotations)
        out_R, out_o = np.empty((k, 3, 3)), np.empty((k, 2))
        out_s, out_s0 = np.empty(k, np.float32), np.empty(k, np.float32)
        B = self.batch
        for i0 in range(0, k, B):
            i1 = min(i0 + B, k)
            sl = slice(i0, i1)
            pad = B - (i1 - i0)
            arrays = {"rotations": rotations[sl], "origins_A": origins_A[sl],
                      **{key: v[sl] for key, v in per_particle.items()}}
            if pad:
                arrays = {key: np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for key, x in arrays.items()}
            Rn, on, s, s0 = self._opt(**arrays)
            n = i1 - i0
            out_R[sl] = orthonormalise(Rn[:n].astype(np.float64))
            out_o[sl] = on[:n]
            out_s[sl] = s[:n]
            out_s0[sl] = s0[:n]
            if on_batch is not None:
                on_batch(n)
        return out_R, out_o, out_s, out_s0


class PoseRefiner(BatchedPoseOptimizer):
    """Refines poses of particles against one GMM on one Fourier grid (the FRC objective)."""

    def __init__(self, gmm: GMM, grid: FourierGrid, settings: PoseSettings = PoseSettings(), batch: int = 16,
                 ring_weights: Optional[np.ndarray] = None, data_scale: float = 1.0, backend=None):
        self.gmm = gmm
        self.grid = grid
        self.ring_weights = normalised_ring_weights(ring_weights, grid.nrings)
        super().__init__(FRCObjective(gmm, grid, self.ring_weights, float(data_scale)), settings, batch, backend)

    def refine(self, particle_ft: np.ndarray, rotations: np.ndarray, origins_A: np.ndarray,
               prior_rotations: Optional[np.ndarray] = None, prior_origins_A: Optional[np.ndarray] = None,
               on_batch=None):
        """particle_ft (k, ny, nx) complex (cropped, phase-flipped), rotations (k,3,3), origins (k,2) Å
        → (rotations, origins_A, score, initial_score) as float64 / float32 arrays.

        ``prior_rotations`` / ``prior_origins_A``: centre of the pose prior (default: the start pose);
        used only when the settings switch the prior on."""
        return super().refine(rotations, origins_A, on_batch=on_batch, particle_ft=particle_ft,
                              prior_rotations=rotations if prior_rotations is None else prior_rotations,
                              prior_origins_A=origins_A if prior_origins_A is None else prior_origins_A)


# --------------------------------------------------------------------------------------------
# streamed alignment of one half set


@dataclass(frozen=True)
class AlignSettings:
    """How particles are aligned: the pose optimiser, the FRC ring weighting ("ssnr": population
    FRC × ring size from up to ``n_weight_sample`` particles at their start poses; "uniform": the
    paper's plain average), particles per device batch and per chunk read from disk."""

    pose: PoseSettings = field(default_factory=PoseSettings)
    ring_weight: str = "ssnr"
    batch: int = 16
    chunk: int = 20000
    n_weight_sample: int = 2000


@dataclass
class AlignResult:
    """Refined poses of the aligned rows, weighted FRC after / at the start, ring weights used."""

    poses: Poses
    score: np.ndarray
    score0: np.ndarray
    ring_weights: np.ndarray


class ChunkCheckpoints:
    """Alignment checkpoints in a folder: ``{tag}_chunkNNNN.npz`` (rows, rotation, origin, score,
    score0) per finished chunk and ``{tag}_ring_weights.npz`` (weights, data_scale)."""

    KEYS = ("rotation", "origin", "score", "score0")

    def __init__(self, folder, tag: str):
        self.folder, self.tag = Path(folder), tag

    def _chunk(self, ci: int) -> Path:
        return self.folder / f"{self.tag}_chunk{ci:04d}.npz"

    def load_chunk(self, ci: int, rows: np.ndarray) -> Optional[Dict[str, np.ndarray]]:
        f = self._chunk(ci)
        if not f.exists():
            return None
        with np.load(f) as z:
            return {k: z[k] for k in self.KEYS} if np.array_equal(z["rows"], rows) else None

    def save_chunk(self, ci: int, rows: np.ndarray, res: Dict[str, np.ndarray]) -> None:
        with atomic_path(self._chunk(ci)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, rows=rows, **res)

    def load_weights(self) -> Optional[Tuple[np.ndarray, float]]:
        f = self.folder / f"{self.tag}_ring_weights.npz"
        if not f.exists():
            return None
        with np.load(f) as z:
            return z["weights"], float(z["data_scale"])

    def save_weights(self, weights: np.ndarray, data_scale: float) -> None:
        with atomic_path(self.folder / f"{self.tag}_ring_weights.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, weights=weights, data_scale=data_scale)


def align_particles(table: ParticleTable, start: Poses, rows: np.ndarray, gmm: GMM, grid: FourierGrid,
                    settings: AlignSettings = AlignSettings(), prior: Optional[Poses] = None,
                    checkpoints: Optional[ChunkCheckpoints] = None, backend=None, desc: str = "align") -> AlignResult:
    """Refine the poses of particles ``rows`` of ``table`` (images, CTF) from ``start`` (poses of
    all table rows) against ``gmm`` on ``grid`` (the resolution band).

    ``prior``: centre of the pose prior (poses of all rows; default ``start``), used when
    ``settings.pose.prior_angle_deg`` is set (it needs the SSNR ring weighting for its scale).
    """
    rows = np.asarray(rows, dtype=np.int64)
    k = len(rows)
    weights, scale = _ring_weights(table, start, rows, gmm, grid, settings, checkpoints, backend)
    if settings.pose.prior_angle_deg is not None and scale is None:
        raise ValueError("a pose prior needs the SSNR ring weighting (its log-likelihood scale)")
    refiner = PoseRefiner(gmm, grid, settings.pose, batch=settings.batch, ring_weights=weights,
                          data_scale=scale or 1.0, backend=backend)
    prior = start if prior is None else prior
    out = {"rotation": np.empty((k, 3, 3)), "origin": np.empty((k, 2)),
           "score": np.empty(k, np.float32), "score0": np.empty(k, np.float32)}
    chunk = settings.chunk
    bar = progress(total=k, desc=desc, unit="ptcl")
    for ci, c0 in enumerate(range(0, k, chunk)):
        sel = slice(c0, min(c0 + chunk, k))
        chunk_rows = rows[sel]
        done = None if checkpoints is None else checkpoints.load_chunk(ci, chunk_rows)
        if done is not None:
            for key in out:
                out[key][sel] = done[key]
            bar.update(len(chunk_rows))
            continue
        res = {key: np.empty_like(v[sel]) for key, v in out.items()}
        # Images are read SUB_BATCH at a time: memory is bounded by that, not by the chunk (the
        # checkpoint unit) or the dataset.
        for pos, imgs in iter_images(table, chunk_rows, chunk=min(chunk, SUB_BATCH)):
            # ``pos`` are table rows (iter_images groups them by file); place them within this chunk
            where = _positions(chunk_rows, pos)
            for b0 in range(0, len(pos), SUB_BATCH):
                b = slice(b0, b0 + SUB_BATCH)
                pb = pos[b]
                F = particle_transforms(imgs[b], table, pb, grid)
                R, o, s, s0 = refiner.refine(F, start.rotation[pb], start.origin_A[pb], prior.rotation[pb],
                                             prior.origin_A[pb], on_batch=bar.update)
                w = where[b]
                res["rotation"][w], res["origin"][w], res["score"][w], res["score0"][w] = R, o, s, s0
        for key in out:
            out[key][sel] = res[key]
        if checkpoints is not None:
            checkpoints.save_chunk(ci, chunk_rows, res)
    bar.close()
    return AlignResult(Poses(out["rotation"], out["origin"]), out["score"], out["score0"], refiner.ring_weights)


def _ring_weights(table, start, rows, gmm, grid, settings, checkpoints, backend):
    """→ (ring weights or None, log-likelihood scale of the weighted FRC or None)."""
    if settings.ring_weight == "uniform":
        return None, None
    if settings.ring_weight != "ssnr":
        raise ValueError(f"unknown ring weighting {settings.ring_weight!r}")
    saved = None if checkpoints is None else checkpoints.load_weights()
    if saved is not None:
        return saved
    n_sample = settings.n_weight_sample
    sample = rows[np.linspace(0, len(rows) - 1, min(n_sample, len(rows))).astype(np.int64)]
    sample = np.unique(sample)
    rings = []
    be = backend or get_backend()
    for pos, imgs in iter_images(table, sample, chunk=len(sample)):
        F = particle_transforms(imgs, table, pos, grid)
        rings.append(be.frc_rings(gmm, grid, F, start.rotation[pos], start.origin_A[pos]))
    rings = np.concatenate(rings)
    w, scale = ssnr_ring_weights(rings, grid), ssnr_data_scale(rings, grid)
    if checkpoints is not None:
        checkpoints.save_weights(w, scale)
    return w, scale


def _positions(rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Where each of ``pos`` sits in ``rows`` (both table row numbers, rows unique)."""
    order = np.argsort(rows)
    return order[np.searchsorted(rows, pos, sorter=order)]
