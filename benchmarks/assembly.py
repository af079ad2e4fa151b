"""The large test particle of the issue-20 benchmarks: copies of one atomic model, each turned by a
random rotation, on a cubic lattice around the box centre.

Used by ``bench_gmm_build.py`` (a map made from the atoms) and ``bench_iteration.py --copies`` (particle
images projected from them), so both measure the same particle: 8 copies of the bundled adenylate
kinase (≈ 190 kDa) at the default 46 Å spacing fill a box-160 particle at 1 Å/px.
"""
from __future__ import annotations

import numpy as np


def lattice_copies(coords_A: np.ndarray, copies: int, spacing_A: float, rng: np.random.Generator) -> np.ndarray:
    """(copies·n, 3) Å, copy after copy: ``coords_A`` (n, 3; centred on the origin) turned by
    ``copies`` random rotations drawn from ``rng`` (in order) and placed on the first ``copies`` sites
    of a ⌈copies^(1/3)⌉³ cubic lattice of ``spacing_A``, the occupied sites centred on the origin."""
    from scipy.spatial.transform import Rotation

    side = int(np.ceil(copies ** (1.0 / 3.0) - 1e-9))
    sites = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:copies], float)
    sites = (sites - sites.mean(axis=0)) * spacing_A
    xyz = np.asarray(coords_A, np.float64)
    return np.concatenate([xyz @ Rotation.random(random_state=rng).as_matrix().T + s for s in sites])
