"""3-D maps (MRC): ``read_map`` → (float32 [z, y, x], apix), ``write_map`` (atomic).

Maps are written the way RELION writes them: float32 (mode 2), volume space group 1, origin 0,
start indices 0, voxel size = apix, header statistics filled in — ChimeraX and RELION both place
such a map at 0..N·apix with its centre voxel N//2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import mrcfile
import numpy as np

from ..safewrite import atomic_path
from ..errors import InputError
from .mrc import set_label


def read_map(path, apix: Optional[float] = None) -> Tuple[np.ndarray, float]:
    """Read a 3-D map as float32 ``[z, y, x]`` and its pixel size (Å).

    Axis orders other than columns = x, rows = y, sections = z (mapc/mapr/maps) are transposed.
    ``apix`` overrides the header's voxel size (needed when the header has none).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path)
    from .mrc import open_mrc

    with open_mrc(path, what="MRC map") as m:  # validated when the header has a map ID, quiet otherwise
        data = np.asarray(m.data, dtype=np.float32)
        h = m.header
        axes = (int(h.maps), int(h.mapr), int(h.mapc))
        vs = float(m.voxel_size.x)
    if data.ndim != 3:
        raise InputError(f"expected a 3-D map, found shape {data.shape}", path=path)
    if sorted(axes) == [1, 2, 3] and axes != (3, 2, 1):
        perm = [axes.index(a) for a in (3, 2, 1)]
        data = np.ascontiguousarray(data.transpose(perm))
    if not np.isfinite(data).all():
        raise InputError("map contains NaN or infinite values", path=path)
    if apix is not None:
        vs = float(apix)
    if not vs > 0:
        raise InputError("voxel size is 0 in the map header; give the pixel size", path=path, field="voxel size")
    return data, vs


def write_map(path, array, apix: float) -> Path:
    """Write a 3-D float32 map ``[z, y, x]`` with voxel size ``apix`` (Å), atomically."""
    data = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {data.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with mrcfile.new(str(tmp), overwrite=True) as m:
            m.set_data(data)
            m.set_volume()
            m.voxel_size = float(apix)
            m.header.origin.x = m.header.origin.y = m.header.origin.z = 0.0
            m.header.nxstart = m.header.nystart = m.header.nzstart = 0
            set_label(m)
            m.update_header_stats()
    return path


def read_map_on_grid(path, box: int, apix: float, what: str = "mask", field: str = "--mask") -> np.ndarray:
    """A map that must sit on the particles' grid (a mask, a starting reference): the same box
    (``box``³ voxels) and the same pixel size as the particles (within 1 %; a header voxel size of
    0 is taken to be the particles').  Returns the float32 ``[z, y, x]`` array."""
    path = Path(path)
    try:
        data, vs = read_map(path)
    except InputError as exc:
        if exc.field != "voxel size":
            raise
        data, vs = read_map(path, apix=apix)
    if data.shape != (box,) * 3:
        raise InputError(f"{what} is {data.shape}, particles need ({box}, {box}, {box})", path=path, field=field)
    if abs(vs - apix) > 0.01 * apix:
        raise InputError(f"{what} pixel size {vs:.4f} Å differs from the particles' {apix:.4f} Å (fix the map "
                         "header's voxel size or resample the map)", path=path, field=field)
    return data
