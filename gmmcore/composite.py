"""Composite maps: mask-weighted averages of maps refined on different regions, and symmetry
reimposition by the same weighting.

Composite of (mask M_i, map V_i) pairs with a fill map F (the paper's Methods, "Patch-by-patch
refinement", with the fill rule made explicit):

    W = Σ_i M_i
    composite = (Σ_i M_i·V_i + max(0, 1 − W)·F) / max(W, 1)

Where the masks sum to ≥ 1 this is exactly Σ M_i·V_i / Σ M_i; where they sum to less (the soft
edges, the solvent) the fill map takes the weight the patches leave, so the composite goes
smoothly to F where no mask reaches (W = 0) and never divides by a small number.

Symmetry reimposition (expanded particles refined in C1 on one asymmetric unit): every pair is
repeated at each symmetry operator S_k of the group, (R_k M, R_k V) with (R_k V)(x) = V(S_kᵀ x),
before the composite — the symmetry-related copies of the refined region, each weighted by its
correspondingly rotated mask.  The result has the group's symmetry wherever the rotated masks
cover it.  Maps are [z, y, x] with the box centre at N//2; rotations are resampled with cubic
B-splines (order 3), masks with trilinear interpolation.

The same masks weigh both half maps, so the composite half maps stay gold-standard independent.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .symmetry import symmetry_matrices


def rotate_map(volume: np.ndarray, S: np.ndarray, order: int = 3) -> np.ndarray:
    """The map turned by rotation S about the box centre N//2: out(x) = V(Sᵀ x) (x = (x, y, z)
    from the centre; voxels from outside the box are 0).  float32."""
    vol = np.asarray(volume, np.float32)
    n = vol.shape[0]
    P = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    M = P @ np.asarray(S, np.float64).T @ P
    c = np.full(3, n // 2, np.float64)
    out = ndimage.affine_transform(vol, M, offset=c - M @ c, order=order, mode="constant", cval=0.0,
                                   prefilter=order > 1)
    return out.astype(np.float32)


def composite(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], fill: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(composite map, weight W = Σ M_i) of (mask, map) pairs, filled with ``fill`` (module notes)."""
    num = None
    W = None
    for m, v in pairs:
        m = np.asarray(m, np.float64)
        num = m * v if num is None else num + m * v
        W = m.copy() if W is None else W + m
    fill = np.asarray(fill, np.float64)
    if W is None:
        return fill.astype(np.float32), np.zeros_like(fill, dtype=np.float32)
    out = (num + np.maximum(0.0, 1.0 - W) * fill) / np.maximum(W, 1.0)
    return out.astype(np.float32), W.astype(np.float32)


def symmetry_pairs(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], sym: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Each (mask, map) pair at every operator of ``sym`` (identity first): (R_k M, R_k V)."""
    out = []
    for S in symmetry_matrices(sym):
        ident = np.allclose(S, np.eye(3))
        for m, v in pairs:
            out.append((m, v) if ident else (np.clip(rotate_map(m, S, order=1), 0.0, 1.0), rotate_map(v, S)))
    return out


def reimpose(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], fill: np.ndarray, sym: str) -> Tuple[np.ndarray, np.ndarray]:
    """The symmetric composite of (mask, map) pairs refined on one asymmetric unit (module notes)."""
    return composite(symmetry_pairs(pairs, sym), fill)
