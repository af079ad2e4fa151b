"""Open MRC files the way RELION reads them: validated when the header has the map ID, permissive
(and quiet) when it has none.

Many real RELION stacks (and files of older programs) have no ``MAP`` string at bytes 208–211
of the header; RELION reads them regardless.  ``mrcfile`` refuses such files, or in permissive
mode warns "Map ID string not found - not an MRC file, or file is corrupt" — an alarming line in
every log for a good file.  :func:`open_mrc` checks the map ID itself:

* map ID present → ``mrcfile`` in its strict mode (any header or size problem is an error);
* map ID absent → permissive mode, the map-ID and machine-stamp warnings silenced (RELION
  assumes the machine's byte order too); every other problem (unknown mode, a file shorter than
  its header says) is still an :class:`~gmmcore.errors.InputError`.

Complex modes (3, 4) are refused: an image is real-valued, and casting would drop the imaginary
part silently.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np

from ..errors import InputError

_MAP_ID_OFFSET = 208
# mrcfile warnings that RELION ignores too when the header has no map ID
_TOLERATED = ("Map ID string not found", "Unrecognised machine stamp", "Machine stamp")
_COMPLEX_MODES = {3: "complex int16", 4: "complex float32"}


def has_map_id(path) -> bool:
    """True when the header holds the MRC2014 map ID ("MAP" at byte 208)."""
    try:
        with open(path, "rb") as f:
            f.seek(_MAP_ID_OFFSET)
            return f.read(3) == b"MAP"
    except OSError as exc:
        raise InputError(f"cannot open ({exc.strerror or exc})", path=path) from None


def open_mrc(path, what: str = "MRC file", mmap: bool = False, header_only: bool = False):
    """Open ``path`` read-only (an ``mrcfile`` object; the caller closes it), as RELION would.

    ``what`` names the file in errors ("stack", "map", ...).  Data are memory-mapped with
    ``mmap``.  Complex-valued files are refused (unless ``header_only``)."""
    path = str(path)
    if not Path(path).is_file():
        raise InputError("file not found", path=path)
    strict = has_map_id(path)
    if mmap and not header_only:
        opener = mrcfile.mmap
    else:
        def opener(p, **kw):
            return mrcfile.open(p, header_only=header_only, **kw)
    try:
        if strict:
            m = opener(path, mode="r")
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m = opener(path, mode="r", permissive=True)
            problems = [str(w.message) for w in caught
                        if issubclass(w.category, RuntimeWarning) and not str(w.message).startswith(_TOLERATED)]
            if problems or (not header_only and m.data is None):
                m.close()
                why = problems[0] if problems else "bad header"
                raise InputError(f"not a readable {what} ({why})", path=path)
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(f"not a readable {what} ({exc})", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot open {what} ({exc.strerror or exc})", path=path) from None
    mode = int(m.header.mode)
    if mode in _COMPLEX_MODES:
        m.close()
        raise InputError(f"a complex-valued {what} (MRC mode {mode}, {_COMPLEX_MODES[mode]}); gmmcore reads "
                         "real-valued images and maps (modes 0, 1, 2, 6, 12)", path=path, field="mode")
    if not header_only and np.iscomplexobj(m.data):
        m.close()
        raise InputError(f"a complex-valued {what}; gmmcore reads real-valued images and maps", path=path,
                         field="mode")
    return m


LABEL = "Created by gmmcore"  # the one header label of the files the engine writes (no time stamp)


def set_label(m) -> None:
    """Replace mrcfile's default label ("Created by mrcfile.py" + the current time, to the second) by
    :data:`LABEL`: the same data then make the same bytes, whenever they are written (a stack's
    content stamp, a resumed run's files)."""
    m.header.label[0] = f"{LABEL:80s}"
    m.header.nlabl = 1
