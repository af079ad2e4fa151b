"""Focused refinement: the refinement loop with the GMMs widened outside a mask.

A focused run is :func:`gmmcore.refine.loop.iterate` with a plan whose ``shape_gmm`` hook is
:func:`gmmcore.gmm.focus.widen_outside` (σ' = σ/(0.25 + 0.75·M(c)) for every Gaussian whose centre
lies where the focus mask M < 1; applied after every fit and every resume load, never saved, never
compounding).  Everything else is global refinement's gold standard: per half its own GMM, fitted
to its own half map; particles of a half aligned only to it; the pose prior centred on the poses
the focused run *started from*; the band follows the measured (FSC-mask) resolution.

Reports: every iteration's FSC unmasked, with the FSC mask, and within the focus mask (the
plan's ``extra_report``: ``resolution_focus`` and ``fsc_focus``, both also for the start).

Public entry points:

* :func:`refine_focused` — N focused iterations from a (particle table, :class:`RefinementState`)
  and a mask array, in a resumable run directory.  This is what ``gmmcore refine-focused``, every
  patch of ``gmmcore refine-patches`` and conformation-to-pose call.
* :func:`start_from_run` / :func:`start_from_maps` — the start state from a finished run
  directory (``--from``) or from another program's particles and half maps.
* :func:`run_focused_command` — the ``gmmcore refine-focused`` driver.

Run directory (as a global run; iteration 0 = the start state, copied in so the directory is
self-contained and a resumed or remote run needs nothing else):

    params.json, run.log, focus_mask.mrc, fsc_mask.mrc
    iter000/  poses.npz, half1.mrc, half2.mrc, report.json (the start)
    iterNNN/  as in a global run
    final/    particles.star, half1.mrc, half2.mrc, map.mrc, GMMs, pose_changes.npz (vs the start)
    summary.json   RunSummary kind "focused"; final.extra["focus_mask"], ["fsc_mask"]
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from .. import __version__
from ..backend import get_backend
from ..errors import InputError
from ..fsc import fsc_masked, half_map_report, resolution_at
from ..gmm.focus import widen_outside
from ..io.maps import read_map, read_map_on_grid, write_map
from ..masks import auto_mask
from ..particles import HalfPair, ParticleTable, check_geometry, check_split
from ..summary import HalfMapReport, RunSummary
from . import loop
from .global_refine import AlignmentOptions, choose_device
from .rundir import RunDir
from .state import IterationPlan, RefinementState, follow_fsc

log = logging.getLogger("gmmcore.refine")

FOCUS_MASK = "focus_mask.mrc"
FSC_MASK = "fsc_mask.mrc"

# Parameters that define a focused run's result (with the fingerprints of its start and masks).
IDENTITY = ("particles_hash", "start_fingerprint", "focus_mask_fingerprint", "fsc_mask_fingerprint", "fit_mask_fingerprint",
            "ngauss", "maxres", "minres", "sym", "steps", "lr_angle", "lr_shift", "seed", "pad", "ring_weight",
            "prior_angle", "prior_shift")


@dataclass(kw_only=True)
class FocusedAlignment(AlignmentOptions):
    """The alignment and device fields of a focused run, shared by patch runs (resolutions Å,
    angles degrees, shifts pixels; keyword-only)."""

    sym: Optional[str] = None  # None: the source run's symmetry (C1 without one)
    ngauss: Optional[int] = None
    maxres: Optional[float] = None
    minres: float = 25.0
    batch: Union[int, str] = 16  # or "auto"
    chunk: int = 20000
    steps: int = 10
    lr_angle: float = 0.5
    lr_shift: float = 0.25
    ring_weight: str = "ssnr"
    prior_angle: Optional[float] = 3.0
    prior_shift: Optional[float] = 1.0
    gpu: Optional[List[int]] = None
    cpu: bool = False
    seed: int = 0
    pad: int = 2
    threads: Optional[int] = None  # CPU threads (None: all cores)
    backend: str = "tf"  # "tf" or "jax"


@dataclass
class FocusedParams(FocusedAlignment):
    """Focused-refinement parameters (resolutions Å, angles degrees, shifts pixels).

    ``source`` (a finished run directory) or ``particles`` + ``half1`` + ``half2`` name the start
    (recorded only; :func:`refine_focused` itself takes the start as arrays).  ``mask`` is the
    focus mask's path (None when the caller passes an array, e.g. a patch)."""

    out: str
    mask: Optional[str] = None
    iterations: int = 3
    source: Optional[str] = None
    particles: Optional[str] = None
    half1: Optional[str] = None
    half2: Optional[str] = None
    fsc_mask: Optional[str] = None
    reimpose: Optional[str] = None  # point group: also write the symmetric composite (expanded particles)
    version: str = field(default=__version__)


def fingerprint(*arrays) -> str:
    """SHA-1 of arrays' bytes (shape and dtype included): identifies a start state or a mask."""
    h = hashlib.sha1()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def focus_report(mask: np.ndarray, apix: float):
    """The plan's ``extra_report``: FSC of the two half maps within ``mask`` (phase-randomisation
    corrected, 0.143) → {"resolution_focus": Å, "fsc_focus": [...]} (frequencies as the main FSC)."""
    def report(maps: HalfPair) -> dict:
        freq, curve = fsc_masked(maps[1], maps[2], apix, mask)
        return {"resolution_focus": resolution_at(freq, curve), "fsc_focus": [float(v) for v in curve]}
    return report


# ---------------------------------------------------------------------------------------------
# the start


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
        fsc_mask = auto_mask(0.5 * (state.half_maps[1] + state.half_maps[2]), apix)
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
        fsc_mask = auto_mask(0.5 * (maps[1] + maps[2]), apix)
    rep = half_map_report(maps[1], maps[2], apix, fsc_mask)
    return RefinementState(0, table.poses, maps, float(rep["resolution"])), fsc_mask


# ---------------------------------------------------------------------------------------------
# the run


def focused_plan(table: ParticleTable, start: RefinementState, focus_mask: np.ndarray, params: FocusedParams,
                 fsc_mask: np.ndarray, fit_mask: Optional[np.ndarray] = None) -> IterationPlan:
    """The plan of a focused run: widen outside ``focus_mask``, prior on the start poses, focus FSC."""
    box, apix = check_geometry(table)
    return IterationPlan(sym=params.sym or "C1", fsc_mask=fsc_mask, fit_mask=fit_mask,
                         band=follow_fsc(params.minres, apix, params.maxres), align=params.align_settings(),
                         shape_gmm=widen_outside(focus_mask, apix), prior=start.poses, ngauss=params.ngauss,
                         seed=params.seed, pad=params.pad, extra_report=focus_report(focus_mask, apix))


def refine_focused(table: ParticleTable, start: RefinementState, focus_mask: np.ndarray, params: FocusedParams,
                   fsc_mask: Optional[np.ndarray] = None, fit_mask: Optional[np.ndarray] = None, backend=None,
                   kind: str = "focused", extra: Optional[dict] = None, device: Optional[str] = None
                   ) -> RunSummary:
    """Run (or continue) ``params.iterations`` focused iterations in ``params.out``.

    ``table``: the particles (poses = ``start.poses``, half sets 1/2); ``start``: the state to
    start from (half maps, measured resolution; its iteration number is ignored); ``focus_mask``:
    float (box,)*3 in 0..1 on the particles' grid; ``fsc_mask``: mask of the FSC (default: the
    automatic mask of the start maps); ``fit_mask``: multiplies each half map before its GMM is
    fitted (None: the whole map, as the paper).  Re-running with the same inputs continues a killed
    run; different inputs into the same directory → InputError.  Returns the run's summary (also
    ``params.out/summary.json``), kind ``kind`` with ``extra`` merged into its top level.
    ``device``: the description of a device already chosen (a worker's); None: choose it here.
    """
    box, apix = check_geometry(table)
    check_split(table)
    params = replace(params, sym=str(params.sym or "C1").upper())
    focus_mask = np.asarray(focus_mask, np.float32)
    if focus_mask.shape != (box,) * 3:
        raise InputError(f"focus mask is {focus_mask.shape}, particles need ({box}, {box}, {box})",
                         path=params.mask, field="--mask")
    if not float(focus_mask.max()) > 0:
        raise InputError("the focus mask is empty (all 0)", path=params.mask, field="--mask")
    if fsc_mask is None:
        fsc_mask = auto_mask(0.5 * (start.half_maps[1] + start.half_maps[2]), apix)
    fsc_mask = np.asarray(fsc_mask, np.float32)
    backend = backend or get_backend(params.backend)
    record = asdict(params)
    record.update(particles_hash=table.content_hash(), start_fingerprint=fingerprint(start.poses.rotation, start.poses.origin_A, start.half_maps[1],
                                                start.half_maps[2]),
                  focus_mask_fingerprint=fingerprint(focus_mask), fsc_mask_fingerprint=fingerprint(fsc_mask),
                  fit_mask_fingerprint=fingerprint(fit_mask))
    run = RunDir.create_or_continue(params.out, record, IDENTITY)
    done = run.path / "summary.json"
    if done.is_file():
        old = RunSummary.load(done)
        if old.final is not None and len(old.iterations) == params.iterations:
            log.info("%s: already complete (%d iterations)", run.path, params.iterations)
            if params.reimpose and (old.final.extra.get("reimposed") or {}).get("sym") != params.reimpose.upper():
                old.final.extra["reimposed"] = _reimpose(run, old, focus_mask, start, fsc_mask, apix,
                                                         params.reimpose.upper())
                old.save()
            return old
    for name, m in ((FOCUS_MASK, focus_mask), (FSC_MASK, fsc_mask)):
        if not (run.path / name).is_file():  # same content on a resume (fingerprints in the identity)
            write_map(run.path / name, m, apix)
    warnings = []
    if device is None:
        device, warnings = choose_device(backend, params.gpu, params.cpu, params.threads)
    rows = table.half_rows()
    log.info("gmmcore %s %s refinement: %d particles (half 1: %d, half 2: %d), box %d, %.3f Å/px, %s, "
             "focus mask %.0f voxels, device %s", __version__, kind, len(table), rows[1].size, rows[2].size, box,
             apix, params.sym, float(focus_mask.sum()), device)

    start = replace(start, iteration=0, gmms=None)
    initial = _start_record(run, table, start, fsc_mask, focus_mask, apix)
    plan = focused_plan(table, start, focus_mask, params, fsc_mask, fit_mask)
    summary = RunSummary(kind=kind, params=record, device=device,
                         n_particles={str(h): int(r.size) for h, r in rows.items()}, initial=initial,
                         directory=str(run.path), extra=dict(extra or {}))
    if warnings:
        summary.extra["warnings"] = warnings
    state = start
    for i in range(1, params.iterations + 1):
        state, rec = loop.iterate(table, state, plan, backend, run.iteration(i))
        log.info("  iteration %d: within the focus mask %.2f Å", i, float(rec.report.extra.get("resolution_focus",
                                                                                                 np.nan)))
        summary.iterations.append(rec)
        summary.save()
    summary.final = run.finish(table, state, start.poses, start.resolution_A)
    last = summary.iterations[-1].report if summary.iterations else initial
    summary.final.extra.update(focus_mask=FOCUS_MASK, fsc_mask=FSC_MASK,
                               resolution_focus=float(last.extra["resolution_focus"]),
                               resolution_focus_initial=float(initial.extra["resolution_focus"]))
    if params.reimpose:
        summary.final.extra["reimposed"] = _reimpose(run, summary, focus_mask, start, fsc_mask, apix, params.reimpose)
    summary.save()
    log.info("done: %.2f Å -> %.2f Å (FSC mask), %.2f Å -> %.2f Å (focus mask); results in %s",
             initial.resolution, summary.resolution_final, initial.extra["resolution_focus"],
             summary.final.extra["resolution_focus"], run.path / "final")
    return summary


def _reimpose(run: RunDir, summary: RunSummary, focus_mask, start: RefinementState, fsc_mask, apix: float,
              sym: str) -> dict:
    """final/reimposed_half{1,2}.mrc, reimposed_map.mrc: the focused region's symmetry copies
    averaged, weighted by the rotated focus masks (:func:`gmmcore.composite.reimpose`), the start
    maps filling the rest; returns their report (files relative to the run directory)."""
    from ..composite import reimpose
    from ..fourier import lowpass

    maps = HalfPair.build(lambda h: reimpose([(focus_mask, read_map(summary.path(f"half{h}"))[0])],
                                             start.half_maps[h], sym)[0])
    rep = half_map_report(maps[1], maps[2], apix, fsc_mask)
    fin = run.path / "final"
    for h, m in maps.items():
        write_map(fin / f"reimposed_half{h}.mrc", m, apix)
    write_map(fin / "reimposed_map.mrc", lowpass(0.5 * (maps[1] + maps[2]), apix, rep["resolution"]), apix)
    log.info("symmetry %s reimposed: %.2f Å (FSC mask)", sym, rep["resolution"])
    return {"sym": sym, "half1": "final/reimposed_half1.mrc", "half2": "final/reimposed_half2.mrc",
            "map": "final/reimposed_map.mrc", "resolution": rep["resolution"],
            "resolution_unmasked": rep["resolution_unmasked"]}


def _start_record(run: RunDir, table: ParticleTable, start: RefinementState, fsc_mask, focus_mask,
                  apix: float) -> HalfMapReport:
    """Iteration 0: the start's poses, half maps and report (with the focus FSC) in iter000/."""
    store = run.iteration(0)
    if store.complete:
        return HalfMapReport.from_json(store.report())
    store.save_poses(start.poses)
    store.save_half_maps(start.half_maps, apix)
    rep = half_map_report(start.half_maps[1], start.half_maps[2], apix, fsc_mask)
    rep.update(focus_report(focus_mask, apix)(start.half_maps))
    store.finish(rep)
    log.info("start: %.2f Å (FSC mask), %.2f Å (unmasked), %.2f Å within the focus mask",
             rep["resolution_masked"], rep["resolution_unmasked"], rep["resolution_focus"])
    return HalfMapReport.from_json(rep)


# ---------------------------------------------------------------------------------------------
# gmmcore refine-focused


def _user_mask(path, box: int, apix: float, what: str, field: str) -> np.ndarray:
    """A mask the user gave: on the particles' grid and a usable soft 0..1 mask (masks.check_mask)."""
    from ..masks import check_mask

    return check_mask(read_map_on_grid(path, box, apix, what=what, field=field), path=path, field=field)


def run_focused_command(params: FocusedParams) -> RunSummary:
    """``gmmcore refine-focused``: the start from ``params.source`` (a finished run) or from
    ``params.particles`` + ``half1`` + ``half2``; every input checked before anything is written."""
    from ..io.star import read_star

    fit_mask = None
    if params.source:
        table, start, fsc_mask, fit_mask, src = start_from_run(params.source)
        params = replace(params, sym=str(params.sym or src.get("sym") or "C1").upper())
    else:
        params = replace(params, sym=str(params.sym or "C1").upper())
        table = read_star(params.particles)
        box, apix = check_geometry(table)
        fsc_mask = _user_mask(params.fsc_mask, box, apix, "FSC mask", "--fsc-mask") if params.fsc_mask else None
        start, fsc_mask = start_from_maps(table, params.half1, params.half2, fsc_mask)
    box, apix = check_geometry(table)
    if params.source and params.fsc_mask:
        fsc_mask = _user_mask(params.fsc_mask, box, apix, "FSC mask", "--fsc-mask")
    focus = _user_mask(params.mask, box, apix, "focus mask", "--mask")
    return refine_focused(table, start, focus, params, fsc_mask=fsc_mask, fit_mask=fit_mask,
                          extra={"start": {"source": params.source or params.particles,
                                           "resolution": float(start.resolution_A)}})
