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
from .kernels import FourierGrid, PoseRefiner, PoseSettings, frc_rings, ssnr_ring_weights
from .model import GMM


def particle_transforms(images: np.ndarray, table: ParticleTable, rows: np.ndarray, grid: FourierGrid) -> np.ndarray:
    """Centred images (k, n, n) of particles ``rows`` → cropped, phase-flipped transforms (k, ny, nx)."""
    F = ft(np.asarray(images, np.float32), 2)
    if not table.phase_flipped:
        F *= np.sign(ctf_2d(table.ctf.subset(rows), grid.apix, grid.box))
    return grid.crop(F)


def align_particles(table: ParticleTable, indices: np.ndarray, gmm: GMM, resolution_A: float, minres_A: float,
                    settings: PoseSettings = PoseSettings(), batch: int = 16, chunk: int = 20000,
                    checkpoint_dir: Optional[Path] = None, tag: str = "align", desc: str = "align",
                    ring_weight: str = "ssnr", n_weight_sample: int = 2000) -> Dict[str, np.ndarray]:
    """Refine the poses of particles ``indices`` of ``table`` against ``gmm``.

    ``ring_weight``: "uniform" averages the per-ring FRC with equal weights (the paper);
    "ssnr" weights ring r by its population FRC × pixel count, estimated from up to
    ``n_weight_sample`` of these particles at their input poses (see kernels.ssnr_ring_weights).

    Returns arrays over ``indices``: ``rotation`` (k,3,3), ``origin`` (k,2) Å, ``score`` (weighted
    FRC after), ``score0`` (weighted FRC at the input pose), and ``ring_weights``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    k = len(indices)
    box, apix = int(table.image_size[indices[0]]), float(table.apix[indices[0]])
    if np.any(table.image_size[indices] != box) or np.any(table.apix[indices] != apix):
        raise ValueError("align_particles needs one box size and pixel size")
    grid = FourierGrid(box, apix, resolution_A, minres_A)
    weights = _ring_weights(table, indices, gmm, grid, ring_weight, n_weight_sample, checkpoint_dir, tag)
    refiner = PoseRefiner(gmm, grid, settings, batch=batch, ring_weights=weights)
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
            F = particle_transforms(imgs, table, pos, grid)
            R, o, s, s0 = refiner.refine(F, table.rotation[pos], table.origin[pos])
            res["rotation"][where], res["origin"][where], res["score"][where], res["score0"][where] = R, o, s, s0
            bar.update(len(pos))
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
    if ring_weight == "uniform":
        return None
    if ring_weight != "ssnr":
        raise ValueError(f"unknown ring weighting {ring_weight!r}")
    wfile = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{tag}_ring_weights.npy"
    if wfile is not None and wfile.exists():
        return np.load(wfile)
    sample = indices[np.linspace(0, len(indices) - 1, min(n_sample, len(indices))).astype(np.int64)]
    sample = np.unique(sample)
    rings = []
    for pos, imgs in iter_images(table, sample, chunk=len(sample)):
        F = particle_transforms(imgs, table, pos, grid)
        rings.append(frc_rings(gmm, grid, F, table.rotation[pos], table.origin[pos]))
    w = ssnr_ring_weights(np.concatenate(rings), grid)
    if wfile is not None:
        with atomic_path(wfile) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, w)
    return w


def _positions(rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Where each of ``pos`` sits in ``rows`` (both table row numbers, rows unique)."""
    order = np.argsort(rows)
    return order[np.searchsorted(rows, pos, sorter=order)]
