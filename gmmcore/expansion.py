"""Symmetry expansion of a particle table (RELION's ``relion_particle_symmetry_expand`` convention).

Each particle i with rotation A_i becomes K rows, one per operator S_k of the point group
(:func:`gmmcore.symmetry.symmetry_matrices`, identity first): rotation A_i·S_k, the same image,
origin, CTF, optics group and — the gold standard — the same half set.  A map V with the group's
symmetry satisfies V(S x) = V(x), so every row explains the image equally well; a mask on one
asymmetric unit then selects a different copy of the subunit in each row (row k brings the copy
S_k·(unit) into the mask's place), which is what focused or patch refinement in C1 needs.

Rows are ordered particle by particle (i·K + k).  Two columns trace them back:
``rlnGmmSourceParticle`` (1-based row of the source particle in the input) and
``rlnGmmSymmetryOperator`` (1-based k).  RELION ignores labels it does not know.
"""
from __future__ import annotations

import numpy as np

from .particles import ParticleTable
from .symmetry import symmetry_matrices, symmetry_name

SOURCE_COLUMN = "rlnGmmSourceParticle"
OPERATOR_COLUMN = "rlnGmmSymmetryOperator"


def expand_symmetry(table: ParticleTable, sym: str) -> ParticleTable:
    """The expanded table (n·K rows; see the module notes)."""
    import pandas as pd

    ops = symmetry_matrices(sym)
    K, n = len(ops), len(table)
    src = np.repeat(np.arange(n), K)
    k = np.tile(np.arange(K), n)
    out = table.subset(src)
    rot = np.einsum("nij,njl->nil", table.rotation[src], ops[k])
    out = out.with_poses(rot, table.origin[src])
    df = out.star_particles.copy() if isinstance(out.star_particles, pd.DataFrame) else pd.DataFrame(index=pd.RangeIndex(n * K))
    df[SOURCE_COLUMN] = src + 1
    df[OPERATOR_COLUMN] = k + 1
    out.star_particles = df
    out.cs_records = None
    out.meta = {**out.meta, "expanded": {"sym": symmetry_name(sym), "operators": K, "source": table.source}}
    return out


def source_rows(table: ParticleTable) -> np.ndarray:
    """0-based source-particle row of each row of an expanded table (from its source column)."""
    import pandas as pd

    df = table.star_particles
    if not isinstance(df, pd.DataFrame) or SOURCE_COLUMN not in df.columns:
        raise KeyError(f"not an expanded particle table (no {SOURCE_COLUMN} column)")
    return df[SOURCE_COLUMN].to_numpy(np.int64) - 1
