"""User-facing errors.

Every mistake a user can make (missing file, missing column, NaN image, ...) is raised as
:class:`InputError`, naming the file and the field.  The command line turns it into one line on
stderr and a non-zero exit code; it is never shown as a traceback.
"""
from __future__ import annotations

from typing import Optional


class InputError(Exception):
    """Bad user input: carries the offending file and field so the message can name them."""

    def __init__(self, message: str, path: Optional[str] = None, field: Optional[str] = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.field:
            where.append(self.field)
        return (": ".join(where) + ": " if where else "") + self.message
