"""RELION star files: read 3.0 / 3.1 / 4 / 5 particle stars, write 3.1+ ones.

:func:`read_star` → :class:`~gmmcore.particles.ParticleTable`; :func:`write_star` writes a RELION 3.1+
file (``data_optics`` then ``data_particles``) that RELION reads.

Facts handled (see ../shared/DESIGN.md §2):

* RELION 3.0: one data block, no optics.  Pixel size from rlnImagePixelSize, else
  rlnDetectorPixelSize [µm] · 1e4 / rlnMagnification; origins rlnOriginX/Y in pixels; voltage, Cs,
  amplitude contrast as particle columns; image size from the stack header.
* RELION 3.1+: ``data_optics`` + ``data_particles`` in either order, joined by the rlnOpticsGroup
  *number* (names may disagree with numbers); per-group pixel size, image size, voltage, Cs,
  amplitude contrast, rlnCtfDataArePhaseFlipped; origins rlnOriginX/YAngst (Å).
  RELION 5 files carry ``# version 50001``.

Blocks are read and written by :mod:`gmmcore.io.star_blocks` (values typed as the ``starfile``
package types them, text written byte for byte as it writes it, but streamed: memory holds the
frames, not the file's text).  Numeric-looking strings would become numbers (micrograph "000123"
→ 123), so every column whose label names a file/name is read as a string.  The particle and optics frames are kept as pass-through (``table.star_particles`` /
``table.star_optics``) so unknown columns survive a round trip.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from ..safewrite import atomic_path
from ..errors import APIX, CS, VOLTAGE, InputError, Remedy
from ..geometry import euler_to_matrix, matrix_to_euler
from ..particles import DEFAULT_AMPLITUDE_CONTRAST, CTFParams, ParticleTable, check_ctf, check_image_names
from .star_blocks import read_blocks, write_blocks
from .stacks import StackLocator, parse_image_name, stack_shape, stack_stamp

# "# gmmcore stack NAME SIZE:HASH": the stack written with this star (see check_stack_stamps)
_STAMP = re.compile(r"^#\s*gmmcore stack\s+(\S+)\s+(\S+)\s*$")

# labels whose values are strings even when they look like numbers
_STRING_LABEL = re.compile(r"(Name|File|FileName|Image|Metadata|Movie|Path)$")
_VERSION = re.compile(r"^#\s*version\s+(\d+)")

# optics information that RELION 3.0 kept in the particle rows; moved to data_optics on writing
_OPTICS_IN_30_PARTICLES = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
                           "rlnDetectorPixelSize", "rlnImagePixelSize", "rlnCtfDataArePhaseFlipped",
                           "rlnImageSize", "rlnImageDimensionality"]

_FLOAT_FORMAT = "%.10g"


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def _prescan(path: Path) -> Tuple[Optional[int], List[str]]:
    """(version from a '# version N' line, labels of string columns).  A label that appears twice
    in one block is an :class:`InputError` (the parser would fail on it obscurely)."""
    version = None
    strings = set()
    block, seen = None, set()
    try:
        with open(path, "r", errors="replace") as f:
            for line in f:
                s = line.lstrip()
                if s.startswith("data_"):
                    block, seen = s.split()[0], set()
                elif s.startswith("_"):
                    lab = s.split()[0][1:]
                    if lab in seen:
                        raise InputError(f"label _{lab} appears twice in {block or 'the file'}", path=path, field=lab)
                    seen.add(lab)
                    if _STRING_LABEL.search(lab):
                        strings.add(lab)
                elif version is None and s.startswith("#"):
                    m = _VERSION.match(s)
                    if m:
                        version = int(m.group(1))
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror or exc})", path=path) from None
    return version, sorted(strings)


def _as_frame(block) -> Optional[pd.DataFrame]:
    if isinstance(block, pd.DataFrame):
        return block
    if isinstance(block, dict) and block:
        return pd.DataFrame({k: [v] for k, v in block.items()})
    return None


def read_star_blocks(path) -> Tuple[Dict[str, pd.DataFrame], Optional[int]]:
    """All data blocks of a star file as DataFrames (simple blocks become one-row frames)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path)
    if not path.is_file():
        raise InputError("not a file", path=path)
    version, strings = _prescan(path)
    try:
        raw = read_blocks(path, strings)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise InputError(f"cannot parse as a STAR file ({type(exc).__name__}: {exc})", path=path) from None
    blocks = {}
    for name, b in (raw or {}).items():
        f = _as_frame(b)
        if f is not None:
            blocks[name] = f
    return blocks, version


def _col(df: pd.DataFrame, name: str, path, block: str) -> np.ndarray:
    if name not in df.columns:
        raise InputError(f"missing column {name} in data_{block}", path=path, field=name)
    return _numeric(df[name], name, path)


def _numeric(series: pd.Series, name: str, path) -> np.ndarray:
    v = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(v)
    if bad.any():  # missing values written as such are NaN, anything else that is not a number is an error
        bad[bad] = ~series[bad].astype(str).str.lower().isin(["nan", "<na>"]).to_numpy()
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(f"non-numeric value {series.iloc[r]!r} in row {r + 1}", path=path, field=name)
    return v


def _integer(v: np.ndarray, name: str, path) -> np.ndarray:
    """Values that must be whole numbers (optics group numbers, sizes, flags): 1.7 is an error,
    never truncated."""
    v = _finite(v, name, path)
    bad = v != np.round(v)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(f"value {v[r]:g} in row {r + 1} is not a whole number", path=path, field=name)
    return v.astype(np.int64)


def _finite(v: np.ndarray, name: str, path) -> np.ndarray:
    if not np.isfinite(v).all():
        r = int(np.flatnonzero(~np.isfinite(v))[0])
        raise InputError(f"NaN or infinite value in row {r + 1}", path=path, field=name)
    return v


def _opt(df: pd.DataFrame, name: str, path, default=None) -> Optional[np.ndarray]:
    if name in df.columns:
        return _numeric(df[name], name, path)
    return None if default is None else np.full(len(df), float(default))


def _pick_particle_block(blocks: Dict[str, pd.DataFrame], path) -> Tuple[str, pd.DataFrame]:
    if "particles" in blocks and "rlnImageName" in blocks["particles"].columns:
        return "particles", blocks["particles"]
    for name, df in blocks.items():
        if name != "optics" and "rlnImageName" in df.columns:
            return name, df
    if not blocks:
        raise InputError("not a STAR file (no data_ block found)", path=path, field="data_particles")
    if "particles" in blocks:
        raise InputError("missing column rlnImageName in data_particles", path=path, field="rlnImageName")
    found = ", ".join("data_" + k for k in blocks)
    raise InputError(f"no particle block (a data_particles loop with rlnImageName); found {found}",
                     path=path, field="data_particles")


def fill_constant(values: Optional[np.ndarray], given: Optional[float], n: int, label: str, path,
                  option: str, remedy: Optional[Remedy], default: Optional[float] = None,
                  tolerance: float = 0.01, warnings: Optional[list] = None) -> np.ndarray:
    """An optics constant (voltage, Cs, amplitude contrast) per particle: the file's values, or
    ``given`` (a command-line value) when the file has none.  A file value that differs from
    ``given`` by more than ``tolerance`` (relative, or absolute below 1) is an :class:`InputError`.
    Missing from both: ``default`` with a warning appended to ``warnings`` (RELION's rule for the
    amplitude contrast), or an :class:`InputError` with ``remedy`` — never a silent guess."""
    if values is not None:
        if given is not None:
            v = np.asarray(values, np.float64)
            dev = np.abs(v - float(given)) / max(abs(float(given)), 1.0)
            if n and np.max(dev) > tolerance:
                r = int(np.argmax(dev))
                raise InputError(f"value {v[r]:g} in the file differs from {option} {given:g}", path=path, field=label)
        return np.asarray(values, np.float64)
    if given is not None:
        return np.full(n, float(given))
    if default is not None:
        if warnings is not None:
            warnings.append(f"{path}: no {label}; using {default:g} (RELION's default; {option} sets another value)")
        return np.full(n, float(default))
    raise InputError(f"missing column {label} (no default is safe)", path=path, field=label, remedy=remedy)


def read_star(path, image_root=None, apix: Optional[float] = None, voltage: Optional[float] = None,
              cs: Optional[float] = None, amp_contrast: Optional[float] = None,
              need_stacks: bool = True) -> ParticleTable:
    """Read a RELION particle star file (3.0, 3.1, 4 or 5).

    ``image_root``: folder relative image paths are resolved against first (default: the star's
    folder; see :class:`gmmcore.io.stacks.StackLocator`).
    ``apix``, ``voltage`` (kV), ``cs`` (mm), ``amp_contrast``: fill a value the file lacks; a file
    value that differs from one of them (pixel size by > 1 %) is an :class:`InputError`.  Without
    them a missing pixel size, voltage or Cs is an :class:`InputError`; a missing amplitude contrast
    is 0.1 (as in RELION) with a warning in ``table.meta["warnings"]``.
    ``need_stacks``: RELION 3.0 files give the image size only through the stacks' headers; with
    False a missing stack leaves the size unknown (0) instead of an error (metadata-only work).
    CTF values are checked against :func:`gmmcore.particles.check_ctf`'s bounds; image names must
    parse (:func:`gmmcore.particles.check_image_names`).
    """
    path = Path(path)
    blocks, version = read_star_blocks(path)
    pname, parts = _pick_particle_block(blocks, path)
    parts = parts.reset_index(drop=True)
    optics = blocks.get("optics")
    if optics is not None:
        optics = optics.reset_index(drop=True)
    n = len(parts)
    star_dir = str(path.resolve().parent)
    root = str(image_root) if image_root is not None else star_dir
    warnings: List[str] = []

    names = parts["rlnImageName"].astype(str).to_numpy(dtype=object)
    check_image_names(names, source=path)
    rot = _finite(_col(parts, "rlnAngleRot", path, pname), "rlnAngleRot", path)
    tilt = _finite(_col(parts, "rlnAngleTilt", path, pname), "rlnAngleTilt", path)
    psi = _finite(_col(parts, "rlnAnglePsi", path, pname), "rlnAnglePsi", path)

    if optics is not None:
        fmt = "relion5" if (version or 0) >= 50000 else "relion3.1"
        per = _optics_per_particle(parts, optics, path, pname)
        group = per["group"]
    else:
        fmt = "relion3.0"
        per = _optics_from_particle_columns(parts, path)
        group = per["group"]

    # pixel size
    px = per["apix"]
    if px is None:
        if apix is None:
            raise InputError("no pixel size (rlnImagePixelSize, or rlnDetectorPixelSize and rlnMagnification)",
                             path=path, field="rlnImagePixelSize", remedy=APIX)
        px = np.full(n, float(apix))
    elif apix is not None:
        rel = np.abs(px - float(apix)) / float(apix)
        if np.nanmax(rel, initial=0.0) > 0.01:
            raise InputError(f"pixel size {px[np.argmax(rel)]:.4f} A in the file differs from --apix {apix} by more "
                             "than 1%", path=path, field="rlnImagePixelSize")
        px = np.full(n, float(apix))
    _finite(px, "rlnImagePixelSize", path)
    if (px <= 0).any():
        raise InputError("pixel size must be positive", path=path, field="rlnImagePixelSize")

    # origins
    if "rlnOriginXAngst" in parts.columns or "rlnOriginYAngst" in parts.columns:
        ox = _finite(_col(parts, "rlnOriginXAngst", path, pname), "rlnOriginXAngst", path)
        oy = _finite(_col(parts, "rlnOriginYAngst", path, pname), "rlnOriginYAngst", path)
    elif "rlnOriginX" in parts.columns or "rlnOriginY" in parts.columns:
        ox = _finite(_col(parts, "rlnOriginX", path, pname), "rlnOriginX", path) * px
        oy = _finite(_col(parts, "rlnOriginY", path, pname), "rlnOriginY", path) * px
    else:
        ox = oy = np.zeros(n)

    # CTF
    du = _finite(_col(parts, "rlnDefocusU", path, pname), "rlnDefocusU", path)
    dv = _finite(_opt(parts, "rlnDefocusV", path) if "rlnDefocusV" in parts.columns else du.copy(),
                 "rlnDefocusV", path)
    da = _finite(_opt(parts, "rlnDefocusAngle", path, 0.0), "rlnDefocusAngle", path)
    ps = _finite(_opt(parts, "rlnPhaseShift", path, 0.0), "rlnPhaseShift", path)
    bf = _finite(_opt(parts, "rlnCtfBfactor", path, 0.0), "rlnCtfBfactor", path)
    kv = fill_constant(per["voltage"], voltage, n, "rlnVoltage", path, "--voltage", VOLTAGE)
    cs_mm = fill_constant(per["cs"], cs, n, "rlnSphericalAberration", path, "--cs-mm", CS)
    q0 = fill_constant(per["amp_contrast"], amp_contrast, n, "rlnAmplitudeContrast", path, "--amp-contrast", None,
                       default=DEFAULT_AMPLITUDE_CONTRAST, tolerance=1e-3, warnings=warnings)
    ctf = CTFParams(defocus_u=du, defocus_v=dv, defocus_angle=da, voltage=kv, cs=cs_mm,
                    amp_contrast=q0, phase_shift=ps, bfactor=bf)
    check_ctf(ctf, path, {"voltage": "rlnVoltage", "cs": "rlnSphericalAberration",
                          "amp_contrast": "rlnAmplitudeContrast", "defocus_u": "rlnDefocusU",
                          "defocus_v": "rlnDefocusV"})

    # half sets
    if "rlnRandomSubset" in parts.columns:
        h = _integer(_numeric(parts["rlnRandomSubset"], "rlnRandomSubset", path), "rlnRandomSubset", path)
        if not np.isin(h, (1, 2)).all():
            bad = sorted(set(np.unique(h[~np.isin(h, (1, 2))]).tolist()))
            raise InputError(f"half sets must be 1 or 2, found {bad}", path=path, field="rlnRandomSubset")
        half = h.astype(np.int8)
    else:
        half = np.zeros(n, dtype=np.int8)

    # image size: from optics, else from the first stack's header
    size = per["image_size"]
    if size is None:
        size = np.zeros(n, dtype=np.int32)
        locator = StackLocator(star_dir, root, str(path))
        for g in np.unique(group):
            first = int(np.flatnonzero(group == g)[0])
            _, p = parse_image_name(names[first])
            f = locator.resolve(p) if need_stacks else locator.find(p)
            if f is not None:
                size[group == g] = stack_shape(f)[2]
    size = np.asarray(size, dtype=np.int32)
    if (size < 0).any():
        raise InputError("image size must be positive", path=path, field="rlnImageSize")

    table = ParticleTable(
        image_name=names,
        rotation=euler_to_matrix(rot, tilt, psi),
        origin=np.stack([ox, oy], axis=1).astype(np.float64),
        half=half,
        optics_group=np.asarray(group, dtype=np.int32),
        apix=np.asarray(px, dtype=np.float64),
        image_size=size,
        ctf=ctf,
        phase_flipped=per["phase_flipped"],
        image_root=root,
        star_particles=parts,
        star_optics=optics,
        source=str(path),
        meta={"format": fmt, "version": version, "star_dir": star_dir, "warnings": warnings},
    )
    check_stack_stamps(path)
    return table


def check_stack_stamps(path) -> None:
    """A star whose header records the stamp of a stack written with it (``# gmmcore stack NAME
    STAMP``, names relative to the star's folder) must find that stack unchanged: a different one is
    an :class:`InputError` (an import interrupted between publishing its stack and its star)."""
    path = Path(path)
    with open(path, "r", errors="replace") as fh:
        for i, line in zip(range(40), fh):
            m = _STAMP.match(line.strip())
            if m is None:
                if line.lstrip().startswith("loop_"):
                    return
                continue
            stack = path.parent / m.group(1)
            if stack.is_file() and stack_stamp(stack) != m.group(2):
                raise InputError(f"{m.group(1)} is not the stack this star was written with (an import interrupted "
                                 "between writing the two?): run the import again", path=path)


def optics_rows(numbers: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Row of data_optics (whose rlnOpticsGroup column is ``numbers``, distinct, any order) of each
    particle's group number in ``group`` (every one present): int64 (n,), one vectorised look-up."""
    numbers = np.asarray(numbers, np.int64)
    order = np.argsort(numbers, kind="stable")
    return order[np.searchsorted(numbers[order], np.asarray(group, np.int64))].astype(np.int64)


def _optics_per_particle(parts: pd.DataFrame, optics: pd.DataFrame, path, pname) -> dict:
    n = len(parts)
    if "rlnOpticsGroup" in optics.columns:
        onum = _integer(_numeric(optics["rlnOpticsGroup"], "rlnOpticsGroup", path), "rlnOpticsGroup", path)
    elif len(optics) == 1:
        onum = np.array([1])
    else:
        raise InputError("missing column rlnOpticsGroup in data_optics", path=path, field="rlnOpticsGroup")
    if len(np.unique(onum)) != len(onum):
        raise InputError("duplicate optics group numbers in data_optics", path=path, field="rlnOpticsGroup")
    if "rlnOpticsGroup" in parts.columns:
        group = _integer(_numeric(parts["rlnOpticsGroup"], "rlnOpticsGroup", path), "rlnOpticsGroup", path)
    elif len(optics) == 1:
        group = np.full(n, int(onum[0]))
    else:
        raise InputError(f"missing column rlnOpticsGroup in data_{pname}", path=path, field="rlnOpticsGroup")
    missing = sorted(set(np.unique(group).tolist()) - set(onum.tolist()))
    if missing:
        raise InputError(f"particles refer to optics group(s) {missing} missing from data_optics",
                         path=path, field="rlnOpticsGroup")
    row = optics_rows(onum, group)

    def per_group(label, fallback_particle=True, integer=False):
        conv = _integer if integer else _finite
        if label in optics.columns:
            return conv(_numeric(optics[label], label, path), label, path)[row]
        if fallback_particle and label in parts.columns:
            return conv(_numeric(parts[label], label, path), label, path)
        return None

    apix = per_group("rlnImagePixelSize")
    if apix is None and "rlnDetectorPixelSize" in optics.columns and "rlnMagnification" in optics.columns:
        apix = (_numeric(optics["rlnDetectorPixelSize"], "rlnDetectorPixelSize", path)
                * 1e4 / _numeric(optics["rlnMagnification"], "rlnMagnification", path))[row]
    size = per_group("rlnImageSize", fallback_particle=False, integer=True)
    flipped = per_group("rlnCtfDataArePhaseFlipped", integer=True)
    return {
        "group": group,
        "apix": apix,
        "image_size": None if size is None else size.astype(np.int32),
        "voltage": per_group("rlnVoltage"),
        "cs": per_group("rlnSphericalAberration"),
        "amp_contrast": per_group("rlnAmplitudeContrast"),
        "phase_flipped": _phase_flipped(flipped, path, "optics groups"),
    }


def _phase_flipped(flags: Optional[np.ndarray], path, what: str) -> bool:
    if flags is None or not len(flags):
        return False
    vals = set(np.unique(flags).tolist())
    if not vals <= {0, 1}:
        raise InputError(f"must be 0 or 1, found {sorted(vals)}", path=path, field="rlnCtfDataArePhaseFlipped")
    if len(vals) > 1:
        raise InputError(f"some {what} are phase flipped and others not; import them separately",
                         path=path, field="rlnCtfDataArePhaseFlipped")
    return vals == {1}


def _optics_from_particle_columns(parts: pd.DataFrame, path) -> dict:
    """RELION 3.0: optics values are particle columns; groups = distinct optics settings."""
    n = len(parts)

    def opt(label, integer=False):
        if label not in parts.columns:
            return None
        v = _numeric(parts[label], label, path)
        return _integer(v, label, path) if integer else _finite(v, label, path)

    if "rlnImagePixelSize" in parts.columns:
        apix = opt("rlnImagePixelSize")
    elif "rlnDetectorPixelSize" in parts.columns and "rlnMagnification" in parts.columns:
        apix = opt("rlnDetectorPixelSize") * 1e4 / opt("rlnMagnification")
    else:
        apix = None
    voltage, cs, q0 = opt("rlnVoltage"), opt("rlnSphericalAberration"), opt("rlnAmplitudeContrast")
    if "rlnOpticsGroup" in parts.columns:
        group = opt("rlnOpticsGroup", integer=True)
    else:
        cols = [np.round(c, 6) if c is not None else np.zeros(n) for c in (apix, voltage, cs, q0)]
        key = np.stack(cols, axis=1) if n else np.zeros((0, 4))
        _, inv = np.unique(key, axis=0, return_inverse=True)
        group = inv.reshape(-1).astype(np.int64) + 1
    return {"group": group, "apix": apix, "image_size": None, "voltage": voltage, "cs": cs,
            "amp_contrast": q0,
            "phase_flipped": _phase_flipped(opt("rlnCtfDataArePhaseFlipped", integer=True), path, "particles")}


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def _optics_groups(table: ParticleTable) -> Tuple[np.ndarray, List[dict]]:
    """Per-particle output group numbers and one dict per group (its optics values).

    Groups keep their numbers when all their particles share pixel size, image size, voltage, Cs
    and amplitude contrast; otherwise groups are split and renumbered 1..m.
    """
    n = len(table)
    og = np.asarray(table.optics_group, dtype=np.int64)
    key = np.stack([og, np.round(table.apix, 6), np.asarray(table.image_size, np.float64),
                    np.round(table.ctf.voltage, 6), np.round(table.ctf.cs, 6),
                    np.round(table.ctf.amp_contrast, 6)], axis=1) if n else np.zeros((0, 6))
    uniq, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    renumber = len(np.unique(uniq[:, 0])) != len(uniq)
    groups = []
    for k, row in enumerate(uniq):
        i = int(first[k])
        groups.append({
            "orig": int(row[0]),
            "number": (k + 1) if renumber else int(row[0]),
            "apix": float(table.apix[i]), "size": int(table.image_size[i]),
            "voltage": float(table.ctf.voltage[i]), "cs": float(table.ctf.cs[i]),
            "amp_contrast": float(table.ctf.amp_contrast[i]),
        })
    numbers = np.array([g["number"] for g in groups], dtype=np.int64)
    out = numbers[inv] if n else np.zeros(0, np.int64)
    return out, groups


def _optics_frame(table: ParticleTable, groups: List[dict]) -> pd.DataFrame:
    src = table.star_optics if isinstance(table.star_optics, pd.DataFrame) else None
    src_rows = {}
    if src is not None and "rlnOpticsGroup" in src.columns:
        for i, g in enumerate(pd.to_numeric(src["rlnOpticsGroup"], errors="coerce")):
            if not pd.isna(g):
                src_rows[int(g)] = src.iloc[i].to_dict()
    renumbered = any(g["number"] != g["orig"] for g in groups)
    rows = []
    for g in groups:
        r = dict(src_rows.get(g["orig"], {}))
        name = r.get("rlnOpticsGroupName", f"opticsGroup{g['orig']}")
        if renumbered:
            name = f"{name}_{g['number']}"
        r.update({
            "rlnOpticsGroupName": str(name),
            "rlnOpticsGroup": g["number"],
            "rlnImagePixelSize": g["apix"],
            "rlnImageSize": g["size"],
            "rlnImageDimensionality": 2,
            "rlnVoltage": g["voltage"],
            "rlnSphericalAberration": g["cs"],
            "rlnAmplitudeContrast": g["amp_contrast"],
            "rlnCtfDataArePhaseFlipped": int(bool(table.phase_flipped)),
        })
        rows.append(r)
    cols = ["rlnOpticsGroupName", "rlnOpticsGroup"]
    if src is not None:
        cols += [c for c in src.columns if c not in cols]
    for c in ["rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality", "rlnVoltage",
              "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnCtfDataArePhaseFlipped"]:
        if c not in cols:
            cols.append(c)
    df = pd.DataFrame(rows, columns=cols)
    for c in ("rlnOpticsGroup", "rlnImageSize", "rlnImageDimensionality", "rlnCtfDataArePhaseFlipped"):
        df[c] = df[c].astype(np.int64)
    if (df["rlnImageSize"] <= 0).any():  # unknown (a metadata-only read without the stacks): RELION reads the headers
        df = df.drop(columns=["rlnImageSize"])
    return df


def particle_frame(table: ParticleTable) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(optics, particles) DataFrames of a RELION 3.1+ star for ``table``."""
    n = len(table)
    out_groups, groups = _optics_groups(table)
    optics = _optics_frame(table, groups)
    if isinstance(table.star_particles, pd.DataFrame):
        df = table.star_particles.reset_index(drop=True)  # a new frame: columns set below never reach the table
        if len(df) != n:
            raise ValueError(f"pass-through star_particles has {len(df)} rows for {n} particles")
        if table.star_optics is None:  # RELION 3.0 pass-through: optics values now live in data_optics
            df = df.drop(columns=[c for c in _OPTICS_IN_30_PARTICLES if c in df.columns])
    else:
        df = pd.DataFrame(index=pd.RangeIndex(n))
    df = df.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in df.columns])

    eul = matrix_to_euler(table.rotation) if n else np.zeros((0, 3))
    cols = {
        "rlnImageName": pd.Series(np.asarray(table.image_name, dtype=object)).astype(str).to_numpy(object),
        "rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
        "rlnOriginXAngst": np.asarray(table.origin[:, 0], np.float64),
        "rlnOriginYAngst": np.asarray(table.origin[:, 1], np.float64),
        "rlnDefocusU": np.asarray(table.ctf.defocus_u, np.float64),
        "rlnDefocusV": np.asarray(table.ctf.defocus_v, np.float64),
        "rlnDefocusAngle": np.asarray(table.ctf.defocus_angle, np.float64),
    }
    for label, v in (("rlnPhaseShift", table.ctf.phase_shift), ("rlnCtfBfactor", table.ctf.bfactor)):
        v = np.asarray(v, np.float64)
        if label in df.columns or (v != 0).any():
            cols[label] = v
    cols["rlnOpticsGroup"] = out_groups.astype(np.int64)
    half = np.asarray(table.half)
    if (half > 0).any():
        cols["rlnRandomSubset"] = half.astype(np.int64)
    elif "rlnRandomSubset" in df.columns:
        df = df.drop(columns=["rlnRandomSubset"])
    for k, v in cols.items():
        df[k] = v
    return optics, df


def write_star(table: ParticleTable, path, stacks: Optional[Dict[str, str]] = None) -> Path:
    """Write ``table`` as a RELION 3.1+ particle star (data_optics, data_particles), atomically.
    ``stacks``: {name relative to the star's folder: :func:`~gmmcore.io.stacks.stack_stamp`} of
    the stacks written with it, recorded in the header and checked on reading."""
    optics, particles = particle_frame(table)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\n# version 30001\n")
        f.write("".join(f"# gmmcore stack {name} {stamp}\n" for name, stamp in (stacks or {}).items()))
        f.write("\n")
        write_blocks(f, {"optics": optics, "particles": particles}, _FLOAT_FORMAT, "nan")
    return path
