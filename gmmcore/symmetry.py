"""Point-group rotation sets in RELION's standard orientations.

Generators (RELION ``SymList::fill_symmetry_class``):

* Cn: n-fold about z.
* Dn: n-fold about z, 2-fold about x.
* T: 3-fold about z, 2-fold about (0, 0.816496, 0.577350).
* O: 3-fold about (1, 1, 1)/√3, 4-fold about z.
* I (= I2, RELION's default): 2-fold about z, 5-fold about (0.525731, 0, 0.850651),
  3-fold about (0, 0.356822, 0.934172).

The group is the closure of the generators.  Because a group is closed under inversion the set is
the same whether one reads the matrices as acting on points or on coordinates.  A map V with this
symmetry satisfies V(R x) = V(x); a particle of rotation A is equally well explained by A·R for
every R in the set.  The identity is always element 0.
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from scipy.spatial.transform import Rotation

from .errors import InputError


def _axis_rot(fold: int, axis) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    return Rotation.from_rotvec(axis * (2 * np.pi / fold)).as_matrix()


def _closure(generators, max_order: int = 120) -> np.ndarray:
    elems = [np.eye(3)]

    def known(m):
        return any(np.abs(m - e).max() < 1e-6 for e in elems)

    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for g in generators:
                m = g @ a
                if not known(m):
                    elems.append(m)
                    new.append(m)
                    if len(elems) > max_order:
                        raise RuntimeError("symmetry closure did not terminate")
        frontier = new
    out = np.array(elems)
    out[np.abs(out) < 1e-12] = 0.0
    return out


def _spelling(sym) -> str:
    return str(sym).strip().upper()


def parse_symmetry(sym: str):
    """'C4' → ('C', 4); 'd7' → ('D', 7); 'T'/'O'/'I'/'I2' → (letter, 0).  Bad → InputError(--sym).
    The one reader of symmetry names (:func:`symmetry_name` spells them)."""
    s = _spelling(sym)
    m = re.fullmatch(r"([CD])(\d+)", s)
    if m and int(m.group(2)) >= 1:
        return m.group(1), int(m.group(2))
    if s in ("T", "O", "I", "I2"):
        return s[0], 0
    raise InputError(f"unknown symmetry {sym!r} (use C1, Cn, Dn, T, O or I)", field="--sym")


def symmetry_name(sym: str, field: str = "--sym") -> str:
    """The canonical name of a point group: 'c4 ' → 'C4', 'd07' → 'D7', 't' → 'T', 'i2' → 'I2'
    (InputError naming ``field`` when unknown)."""
    try:
        letter, n = parse_symmetry(sym)
    except InputError as exc:
        raise InputError(exc.message, field=field) from None
    return f"{letter}{n}" if n else _spelling(sym)


@lru_cache(maxsize=64)
def _matrices(letter: str, n: int) -> np.ndarray:
    if letter == "C":
        return _closure([_axis_rot(n, (0, 0, 1))]) if n > 1 else np.eye(3)[None]
    if letter == "D":
        return _closure([_axis_rot(n, (0, 0, 1)), _axis_rot(2, (1, 0, 0))])
    if letter == "T":
        return _closure([_axis_rot(3, (0, 0, 1)), _axis_rot(2, (0, 2 ** 0.5, 1))])
    if letter == "O":
        return _closure([_axis_rot(3, (1, 1, 1)), _axis_rot(4, (0, 0, 1))])
    if letter == "I":
        phi = (1 + 5 ** 0.5) / 2  # exact forms of RELION's rounded axes
        return _closure([_axis_rot(2, (0, 0, 1)), _axis_rot(5, (1, 0, phi)), _axis_rot(3, (0, phi - 1, phi))])
    raise AssertionError(letter)


def symmetry_matrices(sym: str) -> np.ndarray:
    """(k, 3, 3) rotation matrices of point group ``sym`` (C1, Cn, Dn, T, O, I), identity first."""
    letter, n = parse_symmetry(sym)
    return _matrices(letter, n).copy()


def symmetry_order(sym: str) -> int:
    return int(symmetry_matrices(sym).shape[0])


def expand_rotations(rotations: np.ndarray, sym: str) -> np.ndarray:
    """(n, 3, 3) → (n, k, 3, 3): each A times every symmetry operator, A·R."""
    R = symmetry_matrices(sym)
    return np.einsum("nij,kjl->nkil", np.asarray(rotations, dtype=np.float64), R)
