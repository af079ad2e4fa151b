"""PDB reading (atoms → coordinates and elements) and pseudo-atom PDB writing (one atom per Gaussian).

Reading (:func:`read_atoms`): ATOM and HETATM records of the first model only; hydrogens
(element H or D) and waters (HOH, WAT, DOD, H2O, TIP*, SOL) are skipped; of alternate locations
only the first one met for each atom is kept.  The element comes from columns 77–78 when present,
otherwise from the atom name (columns 13–16, PDB alignment rules).  Coordinates are in Å, in the
file's frame (x, y, z).

Bundled models (:func:`builtin_model_path`): ``builtin:adk-closed`` (adenylate kinase, PDB 1AKE)
and ``builtin:adk-open`` (PDB 4AKE), protein heavy atoms, identical atom order.

Writing (:func:`write_pseudo_atoms`): one ``ATOM`` record per Gaussian, atom ``CA`` of residue
``GMM``, chain A (residues numbered 1.., wrapping at 9999 with chains B, C, ...), occupancy =
amplitude / max amplitude (so ≤ 1), B-factor column = width σ in Å (plain σ, *not* 8π²σ²).  ChimeraX
and PyMOL open it as a CA trace.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np

from ..safewrite import atomic_path
from ..errors import InputError

_BUILTIN = {
    "adk-closed": "adk_closed_1ake_heavy.pdb",
    "adk-open": "adk_open_4ake_heavy.pdb",
}
_WATERS = {"HOH", "WAT", "DOD", "H2O", "TIP", "TIP3", "TIP4", "SOL", "SPC"}
# Two-letter elements that may start a 4-character atom name in HETATM records (ions, metals).
_TWO_LETTER = {"FE", "ZN", "MG", "MN", "CA", "CL", "BR", "NA", "CU", "CO", "NI", "CD", "HG", "SE", "AU",
               "PT", "AG", "LI", "AL", "SR", "BA", "RB", "CS", "MO", "GA", "PB", "XE", "KR", "SI"}

# Atomic numbers and masses of the elements met in macromolecular models (others: carbon-like).
ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9, "NA": 11, "MG": 12, "P": 15, "S": 16, "CL": 17,
                 "K": 19, "CA": 20, "MN": 25, "FE": 26, "CO": 27, "NI": 28, "CU": 29, "ZN": 30, "SE": 34,
                 "BR": 35}
ATOMIC_MASS = {"H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "F": 18.998, "NA": 22.990, "MG": 24.305,
               "P": 30.974, "S": 32.06, "CL": 35.45, "K": 39.098, "CA": 40.078, "MN": 54.938, "FE": 55.845,
               "CO": 58.933, "NI": 58.693, "CU": 63.546, "ZN": 65.38, "SE": 78.971, "BR": 79.904}


def builtin_model_path(name: str) -> Path:
    """Path of a bundled model: ``builtin:adk-closed`` or ``builtin:adk-open`` (prefix optional)."""
    key = name[len("builtin:"):] if name.startswith("builtin:") else name
    if key not in _BUILTIN:
        raise InputError(f"unknown built-in model {name!r} (choose from "
                         + ", ".join("builtin:" + k for k in _BUILTIN) + ")", field="model")
    return Path(__file__).resolve().parents[1] / "data" / _BUILTIN[key]


def resolve_model(model: Union[str, Path]) -> Path:
    """``builtin:...`` → bundled file; anything else is a path."""
    s = str(model)
    return builtin_model_path(s) if s.startswith("builtin:") else Path(s)


def _element(line: str, record: str) -> str:
    el = line[76:78].strip().upper() if len(line) >= 78 else ""
    if el and el.isalpha():
        return el
    name = line[12:16]
    if name[:1] in (" ",) or name[:1].isdigit():  # " CA ", "1HB "
        return "".join(c for c in name[1:2] if c.isalpha()).upper() or name.strip()[:1].upper()
    # 4-character names: "HG11" (hydrogen), "FE  " / "ZN  " (ions, HETATM)
    two = name[:2].upper()
    if record == "HETATM" and two in _TWO_LETTER and (name[2:].strip() == "" or name[2:].strip().isdigit()):
        return two
    return name[:1].upper()


def read_atoms(path) -> Tuple[np.ndarray, np.ndarray]:
    """Read a PDB file → (coords (n, 3) float64 Å, elements (n,) str), heavy atoms of the first model."""
    xyz, el, _ = read_atoms_with_residues(path)
    return xyz, el


def read_atoms_with_residues(path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`read_atoms`, plus each atom's residue number (columns 23–26, int; 0 if blank):
    (coords (n, 3) Å, elements (n,), resseq (n,) int64) — the same atoms in the same order."""
    path = Path(path)
    if not path.is_file():
        raise InputError("atomic model not found", path=path)
    coords, elements, resseq = [], [], []
    seen = set()  # (chain, resseq, icode, resname, atom name) already taken (alternate locations)
    in_model = False
    with open(path, "r", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            rec = line[:6].strip().upper()
            if rec == "MODEL":
                if in_model or seen:
                    break
                in_model = True
                continue
            if rec == "ENDMDL":
                if seen:
                    break
                continue
            if rec not in ("ATOM", "HETATM"):
                continue
            resname = line[17:20].strip().upper()
            if resname in _WATERS or resname.startswith("TIP"):
                continue
            el = _element(line, rec)
            if el in ("H", "D"):
                continue
            key = (line[21:22], line[22:26], line[26:27], resname, line[12:16].strip())
            if key in seen:  # a later alternate location of an atom already read
                continue
            try:
                xyz = (float(line[30:38]), float(line[38:46]), float(line[46:54]))
            except ValueError:
                raise InputError(f"line {lineno}: unreadable coordinates", path=path) from None
            seen.add(key)
            coords.append(xyz)
            elements.append(el)
            resseq.append(int(line[22:26]) if line[22:26].strip().lstrip("-").isdigit() else 0)
    if not coords:
        raise InputError("no (non-hydrogen, non-water) atoms in the file", path=path)
    return np.asarray(coords, dtype=np.float64), np.asarray(elements, dtype=str), np.asarray(resseq, dtype=np.int64)


def atomic_numbers(elements) -> np.ndarray:
    """Atomic number per element symbol (unknown → 6)."""
    return np.array([ATOMIC_NUMBER.get(e.upper(), 6) for e in elements], dtype=np.float64)


def atomic_masses(elements) -> np.ndarray:
    """Atomic mass (Da) per element symbol (unknown → carbon)."""
    return np.array([ATOMIC_MASS.get(e.upper(), 12.011) for e in elements], dtype=np.float64)


def write_pseudo_atoms(path, centers_A, amplitudes, widths_A) -> None:
    """Write a GMM as a pseudo-atom PDB: one CA of residue GMM per Gaussian (atomic write).

    ``centers_A`` (N, 3) Å (x, y, z; written as given, i.e. relative to the box centre if that is
    how the GMM stores them), ``amplitudes`` (N,) → occupancy = amplitude / max(amplitude) (≤ 1),
    ``widths_A`` (N,) σ in Å → B-factor column.
    """
    c = np.asarray(centers_A, dtype=np.float64).reshape(-1, 3)
    a = np.asarray(amplitudes, dtype=np.float64).reshape(-1)
    w = np.asarray(widths_A, dtype=np.float64).reshape(-1)
    if not (len(c) == len(a) == len(w)):
        raise ValueError(f"centres ({len(c)}), amplitudes ({len(a)}) and widths ({len(w)}) differ in length")
    amax = float(np.max(np.abs(a))) if len(a) and np.max(np.abs(a)) > 0 else 1.0
    occ = np.clip(a / amax, 0.0, 1.0)
    chains = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    lines = ["REMARK   1 GAUSSIAN MIXTURE MODEL: ONE PSEUDO-ATOM PER GAUSSIAN",
             "REMARK   1 OCCUPANCY = AMPLITUDE / MAX AMPLITUDE; B-FACTOR COLUMN = WIDTH SIGMA (A)",
             f"REMARK   1 MAX AMPLITUDE {amax:.6g}"]
    for i in range(len(c)):
        chain = chains[(i // 9999) % len(chains)]
        resseq = i % 9999 + 1
        serial = i % 99999 + 1
        x, y, z = (float(np.clip(v, -999.999, 9999.999)) for v in c[i])
        lines.append(f"ATOM  {serial:5d}  CA  GMM {chain}{resseq:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"{occ[i]:6.2f}{min(w[i], 999.99):6.2f}           C  ")
    lines.append("END")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
