"""Where a refinement starts: the one iteration-0 writer and the start-state builders.

* :func:`iteration0` — ``iter000/``: the start's half maps (reconstructed at the table's poses, or
  given), their gold-standard report (with a plan's extra report, e.g. the focus FSC), the FSC
  mask (given, or the automatic one of the two half maps, saved as ``mask_auto.mrc``).
* :func:`start_from_run` — the start of a run that continues a finished run directory (``--from``).
* :func:`start_from_maps` — the start from another program's particles and half maps.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..fsc import half_map_report
from ..io.maps import read_map, read_map_on_grid, write_map
from ..masks import auto_fsc_mask
from ..particles import HalfPair, ParticleTable, check_geometry, check_split
from ..reconstruct import reconstruct_halves
from .rundir import RunDir, Start
from .state import RefinementState

log = logging.getLogger("gmmcore.refine")

FSC_MASK = "fsc_mask.mrc"  # the FSC mask a focused or patch run used, in its folder


def iteration0(table: ParticleTable, run: RunDir, sym: str = "C1", pad: float = 2, chunk: int = 20000,
               fsc_mask: Optional[np.ndarray] = None, executor=None, backend=None,
               start: Optional[RefinementState] = None,
               extra_report: Optional[Callable[[HalfPair], dict]] = None) -> Start:
    """Iteration 0 of ``run`` (loaded when complete): the half maps of ``start`` (poses and maps
    saved) or, without one, reconstructed at the table's poses (``sym``, ``pad``, ``chunk``,
    ``executor``, ``backend``); the FSC mask ``fsc_mask`` or the automatic one (saved as
    mask_auto.mrc); their report, with ``extra_report(maps)``.  The state returned is ``start``
    (its iteration 0) or the reconstruction at its masked resolution."""
    box, apix = check_geometry(table)
    store = run.iteration(0)
    if store.complete:
        report = store.report()
        maps = start.half_maps if start is not None else store.load_half_maps()
    else:
        t0 = time.time()
        if start is None:
            log.info("reconstructing half maps at the input poses")
            maps = reconstruct_halves(table, sym=sym, pad=pad, chunk=chunk, executor=executor, backend=backend,
                                      desc="input poses")
        else:
            maps = start.half_maps
            store.save_poses(start.poses)
        store.save_half_maps(maps, apix)
        if fsc_mask is None:
            fsc_mask = auto_fsc_mask(maps[1], maps[2], apix)
            write_map(run.auto_mask_path, fsc_mask, apix)
        report = half_map_report(maps[1], maps[2], apix, fsc_mask)
        if extra_report is not None:
            report.update(extra_report(maps))
        if start is None:
            report["seconds"] = time.time() - t0
        store.finish(report)
    if fsc_mask is None:
        fsc_mask, _ = read_map(run.auto_mask_path)
    focus = f", {report['resolution_focus']:.2f} Å within the focus mask" if "resolution_focus" in report else ""
    log.info("%s: resolution %.2f Å (masked), %.2f Å (unmasked)%s", "input poses" if start is None else "start",
             report["resolution_masked"], report["resolution_unmasked"], focus)
    state = (RefinementState(0, table.poses, maps, float(report["resolution"])) if start is None else
             replace(start, iteration=0, gmms=None))
    return Start(state, report, fsc_mask)


def start_from_run(source) -> Tuple[ParticleTable, RefinementState, np.ndarray, Optional[np.ndarray], dict]:
    """(table, start state (iteration 0), FSC mask, fit mask or None, source params) of a finished
    run directory (global, focused or patches: its final particles and half maps)."""
    run = RunDir(source)
    if not (run.path / "summary.json").is_file():
        raise InputError("not a gmmcore run directory (no summary.json)", path=run.path, field="--from")
    table, state = run.final_state()
    box, apix = check_geometry(table)
    params = run.params() if (run.path / "params.json").is_file() else {}
    fit_mask = None
    if params.get("mask") and run.summary().kind == "global":
        fit_mask = read_map_on_grid(params["mask"], box, apix)
    fsc_mask = _run_fsc_mask(run, params, box, apix)
    if fsc_mask is None:
        fsc_mask = auto_fsc_mask(state.half_maps[1], state.half_maps[2], apix)
    return table, replace(state, iteration=0), fsc_mask, fit_mask, params


def _run_fsc_mask(run: RunDir, params: dict, box: int, apix: float) -> Optional[np.ndarray]:
    for path in (run.path / FSC_MASK, params.get("fsc_mask"), params.get("mask"), run.auto_mask_path):
        if path and Path(path).is_file():
            return read_map_on_grid(path, box, apix, what="FSC mask")
    return None


def start_from_maps(table: ParticleTable, half1: str, half2: str, fsc_mask: Optional[np.ndarray] = None
                    ) -> Tuple[RefinementState, np.ndarray]:
    """Start state from another program's particles (poses, half sets) and its two half maps:
    (state with the maps' masked FSC resolution, FSC mask (automatic when None))."""
    box, apix = check_geometry(table)
    check_split(table)
    maps = HalfPair(read_map_on_grid(half1, box, apix, what="half map 1", field="--half1"),
                    read_map_on_grid(half2, box, apix, what="half map 2", field="--half2"))
    if fsc_mask is None:
        fsc_mask = auto_fsc_mask(maps[1], maps[2], apix)
    rep = half_map_report(maps[1], maps[2], apix, fsc_mask)
    return RefinementState(0, table.poses, maps, float(rep["resolution"])), fsc_mask
