"""Rotations, in RELION's conventions.

A pose's rotation is RELION's matrix A (``Euler_angles2matrix``): A = Rz(psi)·Ry(tilt)·Rz(rot),
ZYZ, angles in degrees.  A projection is I(p) = ∫ V(Aᵀ p) dz, with p = (x = column, y = row, z)
measured from the box centre N//2, so a 3-D point c (Å, x/y/z) lands at (A c)_xy in the image.

cryoSPARC stores a rotation vector r (radians, any length); RELION's A = Rodrigues(r)ᵀ.
All functions are vectorised over a leading axis.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

_EPS = 16 * np.finfo(np.float32).eps


def euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION Euler angles (degrees) → A, shape (..., 3, 3)."""
    a, b, g = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    A = np.empty(np.broadcast(a, b, g).shape + (3, 3))
    A[..., 0, 0] = cg * cc - sg * sa
    A[..., 0, 1] = cg * cs + sg * ca
    A[..., 0, 2] = -cg * sb
    A[..., 1, 0] = -sg * cc - cg * sa
    A[..., 1, 1] = -sg * cs + cg * ca
    A[..., 1, 2] = sg * sb
    A[..., 2, 0] = sc
    A[..., 2, 1] = ss
    A[..., 2, 2] = cb
    return A


def matrix_to_euler(A) -> np.ndarray:
    """A (..., 3, 3) → RELION (rot, tilt, psi) in degrees, shape (..., 3); tilt in [0, 180]."""
    A = np.asarray(A, dtype=np.float64)
    abs_sb = np.sqrt(A[..., 0, 2] ** 2 + A[..., 1, 2] ** 2)
    regular = abs_sb > _EPS
    psi = np.arctan2(A[..., 1, 2], -A[..., 0, 2])
    rot = np.arctan2(A[..., 2, 1], A[..., 2, 0])
    tilt = np.arctan2(abs_sb, A[..., 2, 2])  # sin(tilt) >= 0 with this branch choice
    # Degenerate tilt = 0 or 180: put everything into psi.
    up = A[..., 2, 2] > 0
    psi_deg = np.where(up, np.arctan2(-A[..., 1, 0], A[..., 0, 0]), np.arctan2(A[..., 1, 0], -A[..., 0, 0]))
    rot = np.where(regular, rot, 0.0)
    tilt = np.where(regular, tilt, np.where(up, 0.0, np.pi))
    psi = np.where(regular, psi, psi_deg)
    return np.rad2deg(np.stack([rot, tilt, psi], axis=-1))


def rotvec_to_matrix(rotvec) -> np.ndarray:
    """cryoSPARC rotation vectors (radians, (..., 3), any length) → RELION A."""
    r = np.asarray(rotvec, dtype=np.float64)
    M = Rotation.from_rotvec(r.reshape(-1, 3)).as_matrix()
    return np.swapaxes(M, -1, -2).reshape(r.shape[:-1] + (3, 3))


def matrix_to_rotvec(A) -> np.ndarray:
    """RELION A (..., 3, 3) → cryoSPARC rotation vector (radians, length ≤ π)."""
    A = np.asarray(A, dtype=np.float64)
    R = np.swapaxes(A, -1, -2).reshape(-1, 3, 3)
    return Rotation.from_matrix(R).as_rotvec().reshape(A.shape[:-2] + (3,))


def angular_distance(A, B) -> np.ndarray:
    """Angle (degrees) of the rotation taking A to B, for stacks of matrices (..., 3, 3)."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    tr = np.einsum("...ij,...ij->...", A, B)  # trace(Aᵀ B)
    return np.rad2deg(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n rotation matrices uniform on SO(3)."""
    return Rotation.random(n, random_state=rng).as_matrix()


def perturb_rotations(A, angle_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate each A by exactly ``angle_deg`` about a random axis: A' = R(δ)·A."""
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    dR = Rotation.from_rotvec(axes * np.deg2rad(angle_deg)).as_matrix()
    return dR @ A
