"""How precisely the data can fix a particle's pose: the Cramér–Rao bound of a region's pose.

A local refinement estimates each particle's pose from that particle alone.  However good the
optimiser, its error cannot fall below the bound set by the information the image carries about
the pose: the Fisher information of the CTF-modulated projection of the region that drives the
alignment, against the noise measured in the images themselves.  When that bound is larger than
the motion a refinement is meant to follow (a small domain at a low SNR), per-particle alignment
of the region can only add noise to its poses — a heterogeneity analysis, which pools particles,
is then the tool.

Model: the phase-flipped transform X_k of an image is a·|CTF_k|·P_k(pose) + noise, P the region's
GMM projection (:meth:`Backend.project_images`, computed on the band's cropped grid), a one scale
fitted to the sample, the noise power per ring measured as the residual against the *whole* GMM.
For complex Gaussian noise of power N_r the Fisher information of parameters θ is
F_ij = 2·Σ_k Re(∂M_k/∂θ_i · conj(∂M_k/∂θ_j)) / N_r(k) over the band's half-plane pixels.  The pose
has five parameters: three rotations about the region's centre of mass (its own rotation, not the
particle's) and two shifts; derivatives are central differences.  Units: degrees, pixels.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..ctf import ctf_2d
from ..fourier import ft
from ..geometry import rotvec_to_matrix
from ..grids import FourierGrid
from ..io.stacks import iter_images
from ..particles import ParticleTable, Poses
from ..summary import PosePrecision
from .model import GMM

STEP_DEG = 0.5  # central-difference step of the rotations
STEP_PX = 0.25  # and of the shifts


def region_of(gmm: GMM, mask: Optional[np.ndarray], apix: float) -> GMM:
    """The Gaussians of ``gmm`` whose centres lie where ``mask`` ≥ 0.5 (the whole GMM for None)."""
    if mask is None:
        return gmm
    from .build import sample_map

    keep = sample_map(np.asarray(mask, np.float32), apix, gmm.centers) >= 0.5
    return GMM(gmm.centers[keep], gmm.amplitudes[keep], gmm.sigmas[keep], dict(gmm.meta))


def pose_precision(gmm: GMM, table: ParticleTable, rows: np.ndarray, poses: Poses, grid: FourierGrid, backend,
                   region_mask: Optional[np.ndarray] = None, n_sample: int = 64) -> Optional[PosePrecision]:
    """The Cramér–Rao bound of the pose of the region ``region_mask`` (None: the whole particle) of
    particles ``rows`` of ``table`` at ``poses`` (all rows), on ``grid`` (the alignment band), with
    ``gmm`` the particle's (unshaped) GMM.  At most ``n_sample`` particles, evenly spread.  None
    when the region holds no Gaussian."""
    return pose_precisions(gmm, table, rows, poses, grid, backend, [region_mask], n_sample)[0]


def pose_precisions(gmm: GMM, table: ParticleTable, rows: np.ndarray, poses: Poses, grid: FourierGrid, backend,
                    region_masks: Sequence[Optional[np.ndarray]], n_sample: int = 64) -> List[Optional[PosePrecision]]:
    """:func:`pose_precision` of several regions (None: the whole particle) of the same particles:
    the images are read, and the noise measured, once."""
    regions = [region_of(gmm, m, grid.apix) for m in region_masks]
    if len(rows) == 0 or all(len(r) == 0 for r in regions):
        return [None] * len(regions)
    rows = np.asarray(rows)[np.unique(np.linspace(0, len(rows) - 1, min(n_sample, len(rows))).astype(np.int64))]
    sub = table.subset(rows)
    R, o = poses.rotation[rows], poses.origin_A[rows]
    n_c = 2 * grid.kmax  # the band's grid: frequencies k/(box·apix), |k| ≤ kmax
    apix_c = grid.box * grid.apix / n_c
    ky = (np.fft.fftfreq(n_c) * n_c).astype(np.int64)
    kx = np.arange(n_c // 2 + 1)
    r = np.hypot(ky[:, None], kx[None, :])
    ring = np.rint(r).astype(np.int64)
    use = (ring >= grid.rmin) & (ring < grid.kmax) & ~((kx[None, :] == 0) & (ky[:, None] < 0))

    images = np.concatenate([im for _, im in iter_images(sub, None, chunk=len(rows))])
    full_ft = ft(np.asarray(images, np.float32), 2)
    X = full_ft[:, ky % grid.box][:, :, : n_c // 2 + 1]
    c = ctf_2d(sub.ctf, grid.apix, grid.box)[:, ky % grid.box][:, :, : n_c // 2 + 1]
    X = X * np.sign(c) if not sub.phase_flipped else X
    c = np.abs(c)

    def model(g: GMM, Rs: np.ndarray, os: np.ndarray) -> np.ndarray:
        return c * ft(backend.project_images(g, Rs, os, apix_c, n_c), 2)

    M = model(gmm, R, o)
    a = float(np.sum((X * M.conj()).real[:, use]) / max(np.sum(np.abs(M[:, use]) ** 2), 1e-30))
    resid = np.abs(X - a * M) ** 2
    noise = np.bincount(ring[use], resid[:, use].mean(0), minlength=grid.kmax) / \
        np.maximum(np.bincount(ring[use], minlength=grid.kmax), 1)
    inv_noise = np.where(use, 1.0 / np.maximum(noise[np.minimum(ring, grid.kmax - 1)], 1e-30), 0.0)
    return [None if len(region) == 0 else
            _bound(region, gmm, model, a, inv_noise, R, o, grid, len(rows)) for region in regions]


def _bound(region: GMM, gmm: GMM, model, a: float, inv_noise: np.ndarray, R: np.ndarray, o: np.ndarray,
           grid: FourierGrid, n: int) -> PosePrecision:
    """The bound of one region from the Fisher information of its projections (module notes)."""
    com = (region.centers * region.amplitudes[:, None]).sum(0) / region.amplitudes.sum()
    eps = np.radians(STEP_DEG)
    derivs = []
    for axis in range(3):  # rotate the region about its centre of mass: its projected centre stays put
        v = np.zeros((n, 3))
        v[:, axis] = eps
        ends = []
        for dR in (rotvec_to_matrix(v), rotvec_to_matrix(-v)):
            Rn = dR @ R
            on = o + (Rn @ com)[:, :2] - (R @ com)[:, :2]
            ends.append(model(region, Rn, on))
        derivs.append(a * (ends[0] - ends[1]) / (2 * eps))
    for axis in range(2):
        d = np.zeros((n, 2))
        d[:, axis] = STEP_PX * grid.apix
        derivs.append(a * (model(region, R, o + d) - model(region, R, o - d)) / (2 * STEP_PX))
    D = np.stack(derivs, 1)  # (n, 5, ny, nx): per radian and per pixel
    fisher = 2.0 * np.einsum("naij,nbij,ij->nab", D, D.conj(), inv_noise).real
    cov = np.linalg.pinv(fisher)
    sd = np.sqrt(np.clip(np.einsum("naa->na", cov), 0, None))
    angle, shift = _expected_errors(cov)
    return PosePrecision(angle_deg=round(float(np.median(angle)), 3), shift_px=round(float(np.median(shift)), 3),
                         axis_deg=tuple(round(float(v), 3) for v in np.degrees(np.median(sd[:, :3], 0))),
                         resolution_A=float(grid.resolution_A), region_gaussians=int(len(region)),
                         region_mass=round(float(region.amplitudes.sum() / gmm.amplitudes.sum()), 4),
                         n_particles=int(n))


def _expected_errors(cov: np.ndarray, draws: int = 4000):
    """Per particle, the mean |rotation vector| (degrees) and mean |shift| (pixels) of Gaussian
    errors with covariance ``cov`` (n, 5, 5) (fixed draws: the same answer every call)."""
    z = np.random.default_rng(0).standard_normal((draws, 3))
    out = []
    for block, scale in ((slice(0, 3), np.degrees(1.0)), (slice(3, 5), 1.0)):
        C = cov[:, block, block]
        w, V = np.linalg.eigh(C)
        L = V * np.sqrt(np.clip(w, 0, None))[:, None, :]
        k = C.shape[-1]
        out.append(scale * np.linalg.norm(np.einsum("nij,sj->nsi", L, z[:, :k]), axis=-1).mean(1))
    return out[0], out[1]
