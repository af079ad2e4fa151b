"""Particle files of either format (RELION star, cryoSPARC .cs): read by name, check their stacks.

Used where the format is known only from the file (the Scipion import form validates a file and a
stack folder before it runs the engine).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..particles import ParticleTable


def read_particles(path, **kw) -> ParticleTable:
    """:func:`~gmmcore.io.cryosparc.read_cs` for a ``.cs`` file, else
    :func:`~gmmcore.io.star.read_star` (same keywords)."""
    if str(path).lower().endswith(".cs"):
        from .cryosparc import read_cs

        return read_cs(path, **kw)
    from .star import read_star

    return read_star(path, **kw)


def missing_stack_error(path, image_root=None, **kw) -> Optional[InputError]:
    """The error an import of ``path`` (with ``image_root`` as --stack-root; ``kw`` as for
    :func:`read_particles`) would stop with because a stack is not found (naming the first missing
    one and the folders searched), or None when every stack is found.  Other problems of the file
    are returned as errors too."""
    from .stacks import resolved_image_names

    try:
        table = read_particles(Path(path), image_root=image_root, need_stacks=False, **kw)
        resolved_image_names(table)
    except InputError as exc:
        return exc
    return None
