"""User-facing errors.

Every mistake a user can make (missing file, missing column, NaN image, ...) is raised as
:class:`InputError`, naming the file and the field.  The command line turns it into one line on
stderr and a non-zero exit code; it is never shown as a traceback.

An error may carry a :class:`Remedy`: the option that fixes it.  Library code does not know which
verb (or which Scipion form) it runs under, so the remedy is rendered by the caller
(:meth:`InputError.render`): "use --stack-root DIR" where the running verb has that option, the
form field's label when run from a Scipion form that maps the option to a field, and otherwise the
remedy's ``otherwise`` text (or nothing) — an error never suggests an option the verb lacks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Optional


@dataclass(frozen=True)
class Remedy:
    """How to fix an error: ``option`` (e.g. "--stack-root"), ``usage`` (the sentence for a verb
    that has it, e.g. "use --stack-root DIR"), ``otherwise`` (for a verb that does not; "" = say
    nothing)."""

    option: str
    usage: str
    otherwise: str = ""


class InputError(Exception):
    """Bad user input: carries the offending file and field so the message can name them."""

    def __init__(self, message: str, path: Optional[str] = None, field: Optional[str] = None,
                 remedy: Optional[Remedy] = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.field = field
        self.remedy = remedy
        super().__init__(str(self))

    def _where(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.field:
            where.append(self.field)
        return ": ".join(where) + ": " if where else ""

    def render(self, options: Optional[Collection[str]] = None,
               form_fields: Optional[Mapping[str, str]] = None) -> str:
        """The one-line message.  ``options``: the running verb's options (None: assume it has the
        remedy's option); ``form_fields``: option → Scipion form label, when run from a form."""
        text = self._where() + self.message
        r = self.remedy
        if r is None:
            return text
        if form_fields and r.option in form_fields:
            return f'{text}; set "{form_fields[r.option]}" in the form'
        if options is None or r.option in options:
            return f"{text}; {r.usage}"
        return f"{text}; {r.otherwise}" if r.otherwise else text

    def __str__(self) -> str:
        return self.render()


# remedies shared by several modules
STACK_ROOT = Remedy("--stack-root", "use --stack-root DIR to name the folder the image paths are relative to",
                    "re-import the particles with gmmcore import --stack-root DIR")
NEW_SPLIT = Remedy("--new-split", "use --new-split to assign a new random split",
                   "re-import with gmmcore import --new-split, or refine with --new-split")
APIX = Remedy("--apix", "give the pixel size with --apix",
              "re-import with gmmcore import --apix")
VOLTAGE = Remedy("--voltage", "give it with --voltage KV", "re-import with gmmcore import --voltage KV")
CS = Remedy("--cs-mm", "give it with --cs-mm MM", "re-import with gmmcore import --cs-mm MM")
