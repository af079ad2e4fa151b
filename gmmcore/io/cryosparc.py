"""cryoSPARC ``.cs`` particle files (NumPy structured arrays): read and write.

Facts (../shared/DESIGN.md §2): ``alignments3D/pose`` is a rotation vector (radians, any length)
with RELION's A = Rodrigues(pose)ᵀ; ``alignments3D/shift`` is in pixels with rlnOrigin's sign;
``alignments3D/split`` 0/1 ↦ half 1/2; ``ctf/df1_A``, ``ctf/df2_A`` (Å), ``ctf/df_angle_rad``,
``ctf/phase_shift_rad`` (radians), ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``;
``blob/path`` (bytes, may start with '>'), ``blob/idx`` (0-based), ``blob/psize_A``, ``blob/shape``
([ny, nx]).  Shifts are converted with ``alignments3D/psize_A`` when present (the pixel size the
alignment was made at), else with the image pixel size.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..safewrite import atomic_path
from ..errors import APIX, CS, VOLTAGE, InputError
from ..geometry import matrix_to_rotvec, rotvec_to_matrix
from ..particles import DEFAULT_AMPLITUDE_CONTRAST, CTFParams, ParticleTable, check_ctf
from .stacks import StackLocator, format_image_name, parse_image_name, stack_shape
from .stacks import reference_rows as rows_by_image_name


def load_cs(path) -> np.ndarray:
    """np.load a .cs file (whatever its extension) as a structured array, without pickles."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path)
    if not path.is_file():
        raise InputError("not a file", path=path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            f.seek(0)
            if magic != b"\x93NUMPY":
                hint = (" (this looks like cryoSPARC's newer compressed dataset format; save it with "
                        "cryosparc-tools as a NumPy .cs)") if magic.endswith(b"CSDAT") else ""
                raise InputError("not a cryoSPARC .cs file (NumPy structured array)" + hint, path=path)
            arr = np.load(f, allow_pickle=False)
    except InputError:
        raise
    except ValueError as exc:
        msg = str(exc)
        if "pickle" in msg.lower():
            raise InputError("the .cs holds Python objects (pickled fields) and cannot be read safely; "
                             "re-export it from cryoSPARC", path=path) from None
        raise InputError(f"not a cryoSPARC .cs file (NumPy structured array): {msg}", path=path) from None
    except Exception as exc:  # noqa: BLE001 - any load failure means a bad file
        raise InputError(f"not a cryoSPARC .cs file (NumPy structured array): {exc}", path=path) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None or arr.ndim != 1:
        raise InputError("not a cryoSPARC .cs file (expected a 1-D NumPy structured array)", path=path)
    return arr


def _decode(v) -> str:
    s = v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)
    return s[1:] if s.startswith(">") else s


def _field(arr, name, path, required=True):
    if name in arr.dtype.names:
        v = np.asarray(arr[name], dtype=np.float64)
        if not np.isfinite(v).all():
            r = int(np.flatnonzero(~np.isfinite(v).reshape(len(arr), -1).all(axis=1))[0])
            raise InputError(f"NaN or infinite value in row {r + 1}", path=path, field=name)
        return v
    if required:
        raise InputError(f"missing field {name}", path=path, field=name)
    return None


def cs_image_names(arr) -> List[Tuple[int, str]]:
    """(index0, path) of every record (path without cryoSPARC's leading '>')."""
    return [(int(i), _decode(p)) for i, p in zip(arr["blob/idx"], arr["blob/path"])]


def read_cs(path, image_root=None, apix: Optional[float] = None, voltage: Optional[float] = None,
            cs: Optional[float] = None, amp_contrast: Optional[float] = None,
            need_stacks: bool = True) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` into a ParticleTable (A = Rodrigues(pose)ᵀ, origins in Å).

    ``apix`` fills a missing ``blob/psize_A``; a ``blob/psize_A`` differing from it by more than 1 %
    is an :class:`InputError`.  ``voltage``, ``cs``, ``amp_contrast`` fill missing ``ctf/accel_kv``,
    ``ctf/cs_mm``, ``ctf/amp_contrast`` (a missing amplitude contrast is 0.1 with a warning in
    ``table.meta["warnings"]``; a missing voltage or Cs without a value is an error).
    ``need_stacks`` as in :func:`gmmcore.io.star.read_star` (only for files without ``blob/shape``).
    """
    from .star import fill_constant

    warnings: List[str] = []
    path = Path(path)
    arr = load_cs(path)
    n = len(arr)
    if n == 0:
        raise InputError("holds no particles (0 records)", path=path)
    for f in ("blob/path", "blob/idx", "alignments3D/pose", "alignments3D/shift"):
        if f not in arr.dtype.names:
            raise InputError(f"missing field {f}", path=path, field=f)
    cs_dir = str(path.resolve().parent)
    root = str(image_root) if image_root is not None else cs_dir

    psize = _field(arr, "blob/psize_A", path, required=False)
    if psize is not None and apix is not None:
        rel = np.abs(psize - float(apix)) / float(apix)
        if rel.max(initial=0.0) > 0.01:
            raise InputError(f"pixel size {psize[np.argmax(rel)]:.4f} A differs from --apix {apix} by more than 1%",
                             path=path, field="blob/psize_A")
    if apix is not None:
        px = np.full(n, float(apix))
    elif psize is not None:
        px = psize
    else:
        raise InputError("no pixel size in the .cs", path=path, field="blob/psize_A", remedy=APIX)
    if (px <= 0).any():
        raise InputError("pixel size must be positive", path=path, field="blob/psize_A")

    pose = _field(arr, "alignments3D/pose", path).reshape(n, 3)
    shift = _field(arr, "alignments3D/shift", path).reshape(n, 2)
    shift_psize = _field(arr, "alignments3D/psize_A", path, required=False)
    if shift_psize is None or (shift_psize <= 0).any():
        shift_psize = px

    names = cs_image_names(arr)
    image_name = np.asarray([format_image_name(i, p) for i, p in names], dtype=object)

    if "blob/shape" in arr.dtype.names:
        shape = np.asarray(arr["blob/shape"]).reshape(n, -1)
        size = shape[:, -1].astype(np.int32)
    else:
        size = np.zeros(n, dtype=np.int32)
        if n:
            locator = StackLocator(cs_dir, root, str(path))
            f = locator.resolve(names[0][1]) if need_stacks else locator.find(names[0][1])
            if f is not None:
                size[:] = stack_shape(f)[2]

    ctf = CTFParams(
        defocus_u=_field(arr, "ctf/df1_A", path),
        defocus_v=_field(arr, "ctf/df2_A", path),
        defocus_angle=np.rad2deg(_field(arr, "ctf/df_angle_rad", path, required=False) if
                                 "ctf/df_angle_rad" in arr.dtype.names else np.zeros(n)),
        voltage=fill_constant(_field(arr, "ctf/accel_kv", path, required=False), voltage, n, "ctf/accel_kv", path,
                              "--voltage", VOLTAGE),
        cs=fill_constant(_field(arr, "ctf/cs_mm", path, required=False), cs, n, "ctf/cs_mm", path, "--cs-mm", CS),
        amp_contrast=fill_constant(_field(arr, "ctf/amp_contrast", path, required=False), amp_contrast, n,
                                   "ctf/amp_contrast", path, "--amp-contrast", None,
                                   default=DEFAULT_AMPLITUDE_CONTRAST, tolerance=1e-3, warnings=warnings),
        phase_shift=np.rad2deg(_field(arr, "ctf/phase_shift_rad", path) if
                               "ctf/phase_shift_rad" in arr.dtype.names else np.zeros(n)),
        bfactor=_field(arr, "ctf/bfactor", path) if "ctf/bfactor" in arr.dtype.names else np.zeros(n),
    )

    check_ctf(ctf, path, {"voltage": "ctf/accel_kv", "cs": "ctf/cs_mm", "amp_contrast": "ctf/amp_contrast",
                          "defocus_u": "ctf/df1_A", "defocus_v": "ctf/df2_A"})

    if "alignments3D/split" in arr.dtype.names:
        split = np.asarray(arr["alignments3D/split"]).astype(np.int64)
        if not np.isin(split, (0, 1)).all():
            raise InputError(f"split must be 0 or 1, found {sorted(set(split[~np.isin(split, (0, 1))].tolist()))}",
                             path=path, field="alignments3D/split")
        half = (split + 1).astype(np.int8)
    else:
        half = np.zeros(n, dtype=np.int8)

    # optics groups: distinct (exposure group, pixel size, box, voltage, Cs, amplitude contrast)
    eg = np.asarray(arr["ctf/exp_group_id"], np.float64) if "ctf/exp_group_id" in arr.dtype.names else np.zeros(n)
    key = np.stack([eg, np.round(px, 6), size, np.round(ctf.voltage, 6), np.round(ctf.cs, 6),
                    np.round(ctf.amp_contrast, 6)], axis=1) if n else np.zeros((0, 6))
    _, inv = np.unique(key, axis=0, return_inverse=True)
    group = inv.reshape(-1).astype(np.int32) + 1

    return ParticleTable(
        image_name=image_name,
        rotation=rotvec_to_matrix(pose),
        origin=shift * shift_psize[:, None],
        half=half,
        optics_group=group,
        apix=np.asarray(px, np.float64),
        image_size=size,
        ctf=ctf,
        phase_flipped=False,
        image_root=root,
        cs_records=arr,
        source=str(path),
        meta={"format": "cryosparc", "star_dir": cs_dir, "warnings": warnings},
    )


def _with_fields(arr: np.ndarray, extra: List[Tuple]) -> np.ndarray:
    """Copy of ``arr`` with the fields in ``extra`` (numpy dtype tuples) added where missing."""
    missing = [d for d in extra if d[0] not in arr.dtype.names]
    if not missing:
        return arr.copy()
    out = np.zeros(arr.shape, dtype=np.dtype(arr.dtype.descr + missing))
    for name in arr.dtype.names:
        out[name] = arr[name]
    return out


def _minimal_records(table: ParticleTable) -> np.ndarray:
    n = len(table)
    parsed = [parse_image_name(s) for s in table.image_name]
    paths = [p for _, p in parsed]
    width = max([len(p.encode()) for p in paths] + [1])
    dt = [("uid", "<u8"), ("blob/path", f"S{width}"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
          ("blob/psize_A", "<f4"), ("ctf/type", "S1"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"),
          ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
          ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"), ("ctf/bfactor", "<f4"),
          ("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
          ("alignments3D/psize_A", "<f4")]
    rec = np.zeros(n, dtype=dt)
    rng = np.random.default_rng(20240901)
    rec["uid"] = rng.integers(1, np.iinfo(np.int64).max, size=n, dtype=np.int64).astype(np.uint64)
    rec["blob/path"] = [p.encode() for p in paths]
    rec["blob/idx"] = [i for i, _ in parsed]
    rec["blob/shape"] = np.stack([table.image_size, table.image_size], axis=1) if n else np.zeros((0, 2))
    rec["blob/psize_A"] = table.apix
    rec["ctf/type"] = b"i"
    rec["ctf/exp_group_id"] = np.asarray(table.optics_group) - 1
    c = table.ctf
    rec["ctf/accel_kv"], rec["ctf/cs_mm"], rec["ctf/amp_contrast"] = c.voltage, c.cs, c.amp_contrast
    rec["ctf/df1_A"], rec["ctf/df2_A"] = c.defocus_u, c.defocus_v
    rec["ctf/df_angle_rad"] = np.deg2rad(c.defocus_angle)
    rec["ctf/phase_shift_rad"] = np.deg2rad(c.phase_shift)
    rec["ctf/bfactor"] = c.bfactor
    rec["alignments3D/psize_A"] = table.apix
    return rec


def reference_rows(table: ParticleTable, ref: np.ndarray, ref_path=None) -> np.ndarray:
    """Rows of the reference .cs records holding ``table``'s particles (see
    :func:`gmmcore.io.stacks.reference_rows`)."""
    return rows_by_image_name(table, cs_image_names(ref), ref_path, "blob/path", "records")


def write_cs(table: ParticleTable, path, reference=None) -> Path:
    """Write ``table`` as a cryoSPARC .cs, atomically; the name keeps its extension.

    Starts from the records of ``reference`` (a .cs path: every field survives; rows matched with
    :func:`reference_rows`), else from ``table.cs_records``, else builds a minimal file (uid, blob/*,
    ctf/*, alignments3D/*).  Updates alignments3D/pose, shift (pixels) and split (when halves are
    assigned).
    """
    n = len(table)
    if reference is not None:
        ref = load_cs(reference)
        rec = ref[reference_rows(table, ref, reference)]
    elif table.cs_records is not None:
        rec = np.asarray(table.cs_records)
        if len(rec) != n:
            raise ValueError(f"pass-through cs_records has {len(rec)} rows for {n} particles")
    else:
        rec = _minimal_records(table)
    rec = _with_fields(rec, [("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,)),
                             ("alignments3D/split", "<u4"), ("alignments3D/psize_A", "<f4")])
    psz = np.asarray(rec["alignments3D/psize_A"], np.float64)
    if (psz <= 0).any() or not np.isfinite(psz).all():
        psz = np.where((psz > 0) & np.isfinite(psz), psz, table.apix)
        rec["alignments3D/psize_A"] = psz
    rec["alignments3D/pose"] = matrix_to_rotvec(table.rotation).reshape(rec["alignments3D/pose"].shape)
    rec["alignments3D/shift"] = (np.asarray(table.origin) / psz[:, None]).reshape(rec["alignments3D/shift"].shape)
    half = np.asarray(table.half)
    if (half > 0).any():
        rec["alignments3D/split"] = np.where(half == 2, 1, 0)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, rec, allow_pickle=False)
    return path
