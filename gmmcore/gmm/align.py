"""Streamed local pose refinement of particles against a GMM (one half set at a time).

Particles are read in chunks (memory does not grow with the dataset); each finished chunk is saved
to ``checkpoint_dir`` so a killed run resumes at the chunk that was in flight.  Raw (not
phase-flipped) particles are flipped on the fly by multiplying their transform by sign(CTF).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..atomic import atomic_path
from ..ctf import ctf_2d
from ..fourier import ft
from ..io.stacks import iter_images
from ..particles import ParticleTable
from ..progress import progress
from .kernels import FourierGrid, PoseRefiner, PoseSettings, frc_rings, ssnr_data_scale, ssnr_ring_weights
from .model import GMM


SUB_BATCH = 1024  # particles whose transforms are held at once


def particle_transforms(images: np.ndarray, table: ParticleTable, rows: np.ndarray, grid: FourierGrid) -> np.ndarray:
    """Centred images (k, n, n) of particles ``rows`` → cropped, phase-flipped transforms (k, ny, nx)."""
    F = ft(np.asarray(images, np.float32), 2)
    if not table.phase_flipped:
        F *= np.sign(ctf_2d(table.ctf.subset(rows), grid.apix, grid.box))
    return grid.crop(F)


def align_particles(table: ParticleTable, indices: np.ndarray, gmm: GMM, resolution_A: float, minres_A: float,
                    settings: PoseSettings = PoseSettings(), batch: int = 16, chunk: int = 20000,
                    checkpoint_dir: Optional[Path] = None, tag: str = "align", desc: str = "align",
                    ring_weight: str = "ssnr", n_weight_sample: int = 2000,
                    prior_rotation: Optional[np.ndarray] = None, prior_origin: Optional[np.ndarray] = None
                    ) -> Dict[str, np.ndarray]:
    """Refine the poses of particles ``indices`` of ``table`` against ``gmm``.

    ``ring_weight``: "uniform" averages the per-ring FRC with equal weights (the paper);
    "ssnr" weights ring r by its population FRC × pixel count, estimated from up to
    ``n_weight_sample`` of these particles at their input poses (see kernels.ssnr_ring_weights).

    ``prior_rotation`` (n,3,3) / ``prior_origin`` (n,2) Å, over all table rows: centre of the pose
    prior when ``settings.prior_angle_deg`` is set (default: the table's poses).

    Returns arrays over ``indices``: ``rotation`` (k,3,3), ``origin`` (k,2) Å, ``score`` (weighted
    FRC after), ``score0`` (weighted FRC at the input pose), and ``ring_weights``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    k = len(indices)
    box, apix = int(table.image_size[indices[0]]), float(table.apix[indices[0]])
    if np.any(table.image_size[indices] != box) or np.any(table.apix[indices] != apix):
        raise ValueError("align_particles needs one box size and pixel size")
    grid = FourierGrid(box, apix, resolution_A, minres_A)
    weights, scale = _ring_weights(table, indices, gmm, grid, ring_weight, n_weight_sample, checkpoint_dir, tag)
    if settings.prior_angle_deg is not None and scale is None:
        raise ValueError("a pose prior needs the SSNR ring weighting (its log-likelihood scale)")
    refiner = PoseRefiner(gmm, grid, settings, batch=batch, ring_weights=weights, data_scale=scale or 1.0)
    prior_rotation = table.rotation if prior_rotation is None else prior_rotation
    prior_origin = table.origin if prior_origin is None else prior_origin
    out = {"rotation": np.empty((k, 3, 3)), "origin": np.empty((k, 2)),
           "score": np.empty(k, np.float32), "score0": np.empty(k, np.float32)}
    bar = progress(total=k, desc=desc, unit="ptcl")
    for ci, c0 in enumerate(range(0, k, chunk)):
        sel = slice(c0, min(c0 + chunk, k))
        rows = indices[sel]
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{tag}_chunk{ci:04d}.npz"
        if ckpt is not None and ckpt.exists():
            with np.load(ckpt) as z:
                if np.array_equal(z["rows"], rows):
                    for key in out:
                        out[key][sel] = z[key]
                    bar.update(len(rows))
                    continue
        res = {key: np.empty_like(v[sel]) for key, v in out.items()}
        for pos, imgs in iter_images(table, rows, chunk=chunk):
            # ``pos`` are table rows (iter_images groups them by file); place them within this chunk
            where = _positions(rows, pos)
            # Transforms in sub-batches: memory is set by SUB_BATCH, not by the chunk or the dataset.
            for b0 in range(0, len(pos), SUB_BATCH):
                b = slice(b0, b0 + SUB_BATCH)
                pb = pos[b]
                F = particle_transforms(imgs[b], table, pb, grid)
                R, o, s, s0 = refiner.refine(F, table.rotation[pb], table.origin[pb], prior_rotation[pb], prior_origin[pb])
                w = where[b]
                res["rotation"][w], res["origin"][w], res["score"][w], res["score0"][w] = R, o, s, s0
                bar.update(len(pb))
        for key in out:
            out[key][sel] = res[key]
        if ckpt is not None:
            with atomic_path(ckpt) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, rows=rows, **res)
    bar.close()
    out["ring_weights"] = refiner.ring_weights
    return out


def _ring_weights(table, indices, gmm, grid, ring_weight, n_sample, checkpoint_dir, tag):
    """→ (ring weights or None, log-likelihood scale of the weighted FRC or None)."""
    if ring_weight == "uniform":
        return None, None
    if ring_weight != "ssnr":
        raise ValueError(f"unknown ring weighting {ring_weight!r}")
    wfile = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{tag}_ring_weights.npz"
    if wfile is not None and wfile.exists():
        with np.load(wfile) as z:
            return z["weights"], float(z["data_scale"])
    sample = indices[np.linspace(0, len(indices) - 1, min(n_sample, len(indices))).astype(np.int64)]
    sample = np.unique(sample)
    rings = []
    for pos, imgs in iter_images(table, sample, chunk=len(sample)):
        F = particle_transforms(imgs, table, pos, grid)
        rings.append(frc_rings(gmm, grid, F, table.rotation[pos], table.origin[pos]))
    rings = np.concatenate(rings)
    w, scale = ssnr_ring_weights(rings, grid), ssnr_data_scale(rings, grid)
    if wfile is not None:
        with atomic_path(wfile) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, weights=w, data_scale=scale)
    return w, scale


def _positions(rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Where each of ``pos`` sits in ``rows`` (both table row numbers, rows unique)."""
    order = np.argsort(rows)
    return order[np.searchsorted(rows, pos, sorter=order)]
