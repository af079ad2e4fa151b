"""Streamed local pose refinement of particles against a GMM (each half set against its own).

Particles are read in chunks (memory does not grow with the dataset); each finished chunk is saved
through a :class:`ChunkCheckpoints` so a killed run resumes at the chunk that was in flight.  Raw
(not phase-flipped) particles are flipped on the fly by multiplying their transform by sign(CTF).
Each chunk is one work unit (:func:`align_chunk`) that an executor (:mod:`gmmcore.parallel`) runs
here or on another process/GPU/node; a chunk's result depends only on its particles.

The optimiser itself is the backend's (:meth:`gmmcore.backend.Backend.pose_optimizer`); this
module batches particles for it (fixed, padded batch size so one compilation serves a run) and
chooses the FRC ring weights.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..backend import FRCObjective, PoseSettings, get_backend
from ..ctf import ctf_2d
from ..fourier import ft
from ..grids import FourierGrid, normalised_ring_weights, ssnr_data_scale, ssnr_ring_weights
from ..io.stacks import iter_images, worker_table
from ..parallel import worker as worker_cache
from ..particles import ParticleTable, Poses
from ..progress import progress
from ..safewrite import atomic_path
from .model import GMM

SUB_BATCH = 1024  # particles whose transforms are held at once
log = logging.getLogger(__name__)


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
    paper's plain average), particles per device batch (or "auto": the backend's ``max_batch`` on
    the device that runs the chunk) and per chunk read from disk."""

    pose: PoseSettings = field(default_factory=PoseSettings)
    ring_weight: str = "ssnr"
    batch: Union[int, str] = 16
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
                    checkpoints: Optional[ChunkCheckpoints] = None, backend=None, desc: str = "align",
                    executor=None) -> AlignResult:
    """Refine the poses of particles ``rows`` of ``table`` (images, CTF) from ``start`` (poses of
    all table rows) against ``gmm`` on ``grid`` (the resolution band).

    ``prior``: centre of the pose prior (poses of all rows; default ``start``), used when
    ``settings.pose.prior_angle_deg`` is set (it needs the SSNR ring weighting for its scale).
    ``executor`` (:mod:`gmmcore.parallel`; default: this process) runs the chunks.
    """
    return align_sets([AlignSet(desc, rows, gmm, checkpoints)], table, start, grid, settings, prior, backend,
                      executor)[0]


@dataclass
class AlignSet:
    """One set of particles aligned against one GMM (e.g. one half set): ``rows`` of the table,
    its (shaped) ``gmm``, its checkpoints (or None); ``label`` names its units in the log."""

    label: str
    rows: np.ndarray
    gmm: GMM
    checkpoints: Optional[ChunkCheckpoints] = None


@dataclass(frozen=True)
class AlignJob:
    """What every chunk of one set shares (sent once per unit): the GMM, grid, settings, ring
    weights and log-likelihood scale, the backend by name; ``key`` names the compiled optimiser a
    worker process keeps for the job's chunks."""

    key: str
    gmm: GMM
    grid: FourierGrid
    settings: AlignSettings
    ring_weights: Optional[np.ndarray]
    data_scale: Optional[float]
    backend: str

    def refiner(self) -> "PoseRefiner":
        backend = get_backend(self.backend)
        batch = self.settings.batch
        if batch == "auto":  # sized on the device that runs this job's chunks
            batch = backend.max_batch(self.gmm, self.grid, self.settings.pose)
            log.info("%s: batch auto → %d particles", self.key, batch)
        return PoseRefiner(self.gmm, self.grid, self.settings.pose, batch=batch,
                           ring_weights=self.ring_weights, data_scale=self.data_scale or 1.0, backend=backend)


def align_sets(sets, table: ParticleTable, start: Poses, grid: FourierGrid, settings: AlignSettings = AlignSettings(),
               prior: Optional[Poses] = None, backend=None, executor=None) -> list:
    """Align several independent sets of particles (e.g. the two half sets, each against its own GMM)
    → one :class:`AlignResult` per set, in order.

    Work units (:mod:`gmmcore.parallel`): per set, its SSNR ring weights (from up to
    ``settings.n_weight_sample`` particles at their start poses); then per set and chunk of
    ``settings.chunk`` of its rows, the chunk's alignment.  All chunks of all sets go to the executor
    at once; a chunk found in its checkpoints is loaded, not run, and a chunk unit saves its
    checkpoint before returning, so a unit rerun after its worker died finds it and never redoes
    it.  A chunk's result depends only on its particles: neither the executor nor the order in
    which chunks finish changes it.
    """
    from ..parallel import Unit, local_executor

    ex = executor or local_executor()
    be_name = (backend or get_backend()).name
    prior = start if prior is None else prior
    sets = [replace(s, rows=np.asarray(s.rows, dtype=np.int64)) for s in sets]
    # units carry their rows without the star pass-through columns, and to other processes with
    # absolute image paths (a worker's working directory is not ours)
    lean = replace(table, star_particles=None, cs_records=None) if ex.in_process else worker_table(table)

    samples = [_weight_sample(s.rows, settings) for s in sets]
    weights = ex.run([Unit(f"{s.label} ring weights", ring_weight_unit,
                           (lean.subset(r), start.subset(r), s.gmm, grid, settings, s.checkpoints, be_name))
                      for s, r in zip(sets, samples)])
    if settings.pose.prior_angle_deg is not None and any(scale is None for _, scale in weights):
        raise ValueError("a pose prior needs the SSNR ring weighting (its log-likelihood scale)")
    jobs = [AlignJob(f"align-{uuid.uuid4().hex}", s.gmm, grid, settings, w, scale, be_name)
            for s, (w, scale) in zip(sets, weights)]

    outs, units, where = [], [], []
    chunk = settings.chunk
    bars = [progress(total=len(s.rows), desc=s.label, unit="ptcl") for s in sets]
    for si, s in enumerate(sets):
        k = len(s.rows)
        outs.append({"rotation": np.empty((k, 3, 3)), "origin": np.empty((k, 2)),
                     "score": np.empty(k, np.float32), "score0": np.empty(k, np.float32)})
        for ci, c0 in enumerate(range(0, k, chunk)):
            sel = slice(c0, min(c0 + chunk, k))
            chunk_rows = s.rows[sel]
            done = None if s.checkpoints is None else s.checkpoints.load_chunk(ci, chunk_rows)
            if done is not None:
                _place(outs[si], sel, done)
                bars[si].update(len(chunk_rows))
                continue
            label = f"{s.label} chunk {ci} ({len(chunk_rows)} ptcl)"
            if ex.in_process:  # the unit cuts its particles from the shared table when it runs: one chunk's copy at a time
                units.append(Unit(label, align_rows, (jobs[si], ci, chunk_rows, lean, start, prior, s.checkpoints),
                                  {"progress": bars[si].update}))
            else:  # a unit sent elsewhere carries its own particles only
                units.append(Unit(label, align_chunk, (jobs[si], ci, chunk_rows, lean.subset(chunk_rows),
                                                       start.subset(chunk_rows), prior.subset(chunk_rows),
                                                       s.checkpoints)))
            where.append((si, sel))

    def on_done(i, res, info):
        si, sel = where[i]
        _place(outs[si], sel, res)
        if not ex.in_process:
            bars[si].update(sel.stop - sel.start)

    try:
        ex.run(units, on_done)
    finally:
        for bar in bars:
            bar.close()
        for job in jobs:  # in this process: free the compiled optimisers
            worker_cache.forget(job.key)
    return [AlignResult(Poses(o["rotation"], o["origin"]), o["score"], o["score0"],
                        normalised_ring_weights(job.ring_weights, grid.nrings)) for o, job in zip(outs, jobs)]


def align_chunk(job: AlignJob, ci: int, rows: np.ndarray, chunk_table: ParticleTable, start: Poses, prior: Poses,
                checkpoints: Optional[ChunkCheckpoints] = None, progress=None) -> Dict[str, np.ndarray]:
    """Work unit: align chunk ``ci`` of a set — ``rows`` (table row numbers, for the checkpoint), their
    particles ``chunk_table`` and ``start`` / ``prior`` poses (row j ↔ rows[j]) → arrays rotation
    (k,3,3), origin (k,2) Å, score, score0 (k,).  Loads the chunk's checkpoint when it exists, else
    aligns and saves it.  ``progress(n)`` is called as particles finish (in-process runs)."""
    done = None if checkpoints is None else checkpoints.load_chunk(ci, rows)
    if done is not None:
        return done
    refiner = worker_cache.cached(job.key, job.refiner)
    k = len(rows)
    res = {"rotation": np.empty((k, 3, 3)), "origin": np.empty((k, 2)),
           "score": np.empty(k, np.float32), "score0": np.empty(k, np.float32)}
    # ``pos`` are rows of chunk_table (iter_images groups them by file), i.e. places in this chunk.
    # Images are read SUB_BATCH at a time: memory is set by that, not by the chunk or the dataset.
    for pos, imgs in iter_images(chunk_table, None, chunk=max(min(k, SUB_BATCH), 1)):
        for b0 in range(0, len(pos), SUB_BATCH):
            pb = pos[b0:b0 + SUB_BATCH]
            F = particle_transforms(imgs[b0:b0 + SUB_BATCH], chunk_table, pb, job.grid)
            R, o, s, s0 = refiner.refine(F, start.rotation[pb], start.origin_A[pb], prior.rotation[pb],
                                         prior.origin_A[pb], on_batch=progress)
            res["rotation"][pb], res["origin"][pb], res["score"][pb], res["score0"][pb] = R, o, s, s0
    if checkpoints is not None:
        checkpoints.save_chunk(ci, rows, res)
    return res


def align_rows(job: AlignJob, ci: int, rows: np.ndarray, table: ParticleTable, start: Poses, prior: Poses,
               checkpoints: Optional[ChunkCheckpoints] = None, progress=None) -> Dict[str, np.ndarray]:
    """Work unit run in this process: :func:`align_chunk` of the table rows ``rows``, their
    particles and poses cut from ``table`` / ``start`` / ``prior`` (all rows) only when it runs."""
    return align_chunk(job, ci, rows, table.subset(rows), start.subset(rows), prior.subset(rows), checkpoints,
                       progress)


def ring_weight_unit(sample_table: ParticleTable, sample_start: Poses, gmm: GMM, grid: FourierGrid,
                     settings: AlignSettings, checkpoints: Optional[ChunkCheckpoints], backend: str):
    """Work unit: the SSNR ring weights of one set from its sample particles (their start poses)
    → (weights or None, log-likelihood scale or None); loaded from / saved to the checkpoints."""
    if settings.ring_weight == "uniform":
        return None, None
    if settings.ring_weight != "ssnr":
        raise ValueError(f"unknown ring weighting {settings.ring_weight!r}")
    saved = None if checkpoints is None else checkpoints.load_weights()
    if saved is not None:
        return saved
    rings = []
    be = get_backend(backend)
    for pos, imgs in iter_images(sample_table, None, chunk=max(len(sample_table), 1)):
        F = particle_transforms(imgs, sample_table, pos, grid)
        rings.append(be.frc_rings(gmm, grid, F, sample_start.rotation[pos], sample_start.origin_A[pos]))
    rings = np.concatenate(rings)
    w, scale = ssnr_ring_weights(rings, grid), ssnr_data_scale(rings, grid)
    if checkpoints is not None:
        checkpoints.save_weights(w, scale)
    return w, scale


def _weight_sample(rows: np.ndarray, settings: AlignSettings) -> np.ndarray:
    """The rows whose FRC at the start poses sets the ring weights: evenly spread, sorted, unique."""
    if settings.ring_weight != "ssnr" or len(rows) == 0:
        return rows[:0]
    n_sample = settings.n_weight_sample
    sample = rows[np.linspace(0, len(rows) - 1, min(n_sample, len(rows))).astype(np.int64)]
    return np.unique(sample)


def _place(out: Dict[str, np.ndarray], sel: slice, res: Dict[str, np.ndarray]) -> None:
    for key in out:
        out[key][sel] = res[key]

