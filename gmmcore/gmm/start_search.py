"""A coarse search for each particle's start pose before its local refinement (``--search-angle``).

Local refinement (Adam from the start pose, :mod:`gmmcore.gmm.align`) follows the score's basin
around the start; a region that moved further than the basin reaches (a domain turned by 5–15°
from the consensus pose, at a fine band) stays where it was.  Before the Adam steps each particle is
scored at a set of turned copies of its start pose — the start itself, and turns by ±θ/2 and ±θ about
each of the six axes of an icosahedron's vertices (25 candidates, θ = ``search_angle_deg``) — and
the Adam steps start from the best one.

The turns are about a centre (``centre_A``, Å from the box centre; the focus mask's centre of mass
in a focused run, the box centre otherwise): a candidate's origin is moved so that the centre
projects where it did, so the region of interest is turned in place rather than swung away.
Candidates are compared by the objective the optimiser maximises: data_scale·S − the pose prior's
penalty (S the ring-weighted FRC; the penalty of the deviation from the prior centre, as
:class:`gmmcore.backend.PoseSettings` writes it), so a prior narrower than the search keeps the
start unless the data outweigh it.  Angles in degrees, origins and centres in Å.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from ..backend import PoseSettings
from ..grids import FourierGrid
from .model import GMM

GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0
# the six axes through an icosahedron's opposite vertices (63.4° between neighbours)
AXES = np.array([[0, 1, GOLDEN], [0, -1, GOLDEN], [1, GOLDEN, 0], [-1, GOLDEN, 0], [GOLDEN, 0, 1], [-GOLDEN, 0, 1]],
                float) / math.sqrt(1.0 + GOLDEN ** 2)


def candidate_turns(search_angle_deg: float) -> np.ndarray:
    """The turns tried, (25, 3, 3): the identity first, then ±θ/2 and ±θ about each axis of
    :data:`AXES` (θ = ``search_angle_deg``, degrees)."""
    theta = math.radians(float(search_angle_deg))
    vecs = [np.zeros(3)] + [s * f * theta * a for a in AXES for f in (0.5, 1.0) for s in (1.0, -1.0)]
    return Rotation.from_rotvec(np.array(vecs)).as_matrix()


def prior_penalty(rotations: np.ndarray, origins_A: np.ndarray, prior_rotations: np.ndarray,
                  prior_origins_A: np.ndarray, pose: PoseSettings, apix: float) -> np.ndarray:
    """The pose prior's penalty of each pose, (k,): ½|v|²/σ_a² + ½|Δo|²/σ_s² with v the skew part of
    R·Pᵀ (sin θ times the axis), σ_a in radians, σ_s in Å — the optimiser's own; 0 without a prior."""
    if pose.prior_angle_deg is None:
        return np.zeros(len(rotations))
    D = rotations @ np.swapaxes(prior_rotations, 1, 2)
    v = np.stack([D[:, 2, 1] - D[:, 1, 2], D[:, 0, 2] - D[:, 2, 0], D[:, 1, 0] - D[:, 0, 1]], -1) / 2.0
    pen = 0.5 * (v ** 2).sum(-1) / math.radians(pose.prior_angle_deg) ** 2
    if pose.prior_shift_px:
        pen += 0.5 * ((origins_A - prior_origins_A) ** 2).sum(-1) / (pose.prior_shift_px * apix) ** 2
    return pen


def best_starts(backend, gmm: GMM, grid: FourierGrid, particle_ft: np.ndarray, rotations: np.ndarray,
                origins_A: np.ndarray, prior_rotations: np.ndarray, prior_origins_A: np.ndarray,
                ring_weights: np.ndarray, data_scale: Optional[float], pose: PoseSettings, search_angle_deg: float,
                centre_A: Tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each particle's best start among :func:`candidate_turns` of its pose about ``centre_A`` →
    (rotations (k,3,3), origins (k,2) Å, the chosen turn's angle in degrees (k,)).

    ``particle_ft``: cropped, phase-flipped transforms (k, ny, nx); ``ring_weights``: the FRC's
    (normalised) ring weights; ``data_scale``: the log-likelihood scale of the SSNR weighting (None: 1).
    """
    k = len(rotations)
    turns = candidate_turns(search_angle_deg)
    c = np.asarray(centre_A, float)
    w = np.asarray(ring_weights, np.float64)
    scale = 1.0 if data_scale is None else float(data_scale)
    Rc0 = rotations @ c  # (k, 3): the centre in the lab frame at the start pose
    best_j = np.full(k, -np.inf)
    best_R, best_o = np.array(rotations, float), np.array(origins_A, float)
    best_angle = np.zeros(k)
    for E in turns:
        R = E[None] @ rotations
        o = origins_A + (R @ c - Rc0)[:, :2]  # the centre projects where it did
        s = backend.frc_rings(gmm, grid, particle_ft, R, o).astype(np.float64) @ w
        j = scale * s - prior_penalty(R, o, prior_rotations, prior_origins_A, pose, grid.apix)
        better = j > best_j
        best_j = np.where(better, j, best_j)
        best_R[better], best_o[better] = R[better], o[better]
        best_angle[better] = math.degrees(float(np.linalg.norm(Rotation.from_matrix(E).as_rotvec())))
    return best_R, best_o, best_angle


def mask_centre_A(mask: np.ndarray, apix: float) -> Tuple[float, float, float]:
    """Centre of mass of a mask ([z, y, x], box centre N//2) in Å (x, y, z) from the box centre."""
    m = np.clip(np.asarray(mask, np.float64), 0.0, None)
    total = float(m.sum())
    if total <= 0:
        return (0.0, 0.0, 0.0)
    n = m.shape[0]
    zyx = [float((m.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(n)).sum()) / total for ax in range(3)]
    return tuple(float((v - n // 2) * apix) for v in zyx[::-1])
