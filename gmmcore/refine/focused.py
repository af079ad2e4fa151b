"""``gmmcore refine-focused``: a focused run from a finished run directory or from another
program's particles and half maps.

The plan and the call are :mod:`.focused_run` (:func:`~.focused_run.focused_plan`,
:func:`~.focused_run.refine_focused`); the start is :mod:`.start`
(:func:`~.start.start_from_run`, :func:`~.start.start_from_maps`).  This driver reads and checks
every input (masks through :func:`.drive.read_user_mask`) before anything is written.
"""
from __future__ import annotations

from dataclasses import replace

from ..particles import check_geometry
from ..summary import RunKind, RunSummary, StartRecord
from ..symmetry import symmetry_name
from .drive import read_user_mask
from .focused_run import FocusedParams, refine_focused
from .start import start_from_maps, start_from_run

__all__ = ["FocusedParams", "refine_focused", "run_focused_command", "start_from_maps", "start_from_run"]


def run_focused_command(params: FocusedParams) -> RunSummary:
    """``gmmcore refine-focused``: the start from ``params.source`` (a finished run) or from
    ``params.particles`` + ``half1`` + ``half2``; every input checked before anything is written."""
    from ..io.star import read_star

    fit_mask = None
    if params.source:
        table, start, fsc_mask, fit_mask, src = start_from_run(params.source)
        params = replace(params, sym=symmetry_name(params.sym or src.get("sym") or "C1"))
    else:
        params = replace(params, sym=symmetry_name(params.sym or "C1"))
        table = read_star(params.particles)
        box, apix = check_geometry(table)
        fsc_mask = read_user_mask(params.fsc_mask, box, apix, "FSC mask", "--fsc-mask") if params.fsc_mask else None
        start, fsc_mask = start_from_maps(table, params.half1, params.half2, fsc_mask)
    box, apix = check_geometry(table)
    if params.source and params.fsc_mask:
        fsc_mask = read_user_mask(params.fsc_mask, box, apix, "FSC mask", "--fsc-mask")
    focus = read_user_mask(params.mask, box, apix, "focus mask", "--mask")
    start_record = StartRecord(source=params.source or params.particles, resolution=float(start.resolution_A))
    return refine_focused(table, start, focus, params, fsc_mask=fsc_mask, fit_mask=fit_mask, kind=RunKind.FOCUSED,
                          mode={"start": start_record})
