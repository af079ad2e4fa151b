"""One focused run from arrays: the refinement loop with the GMMs widened outside a mask.

A focused run is :func:`gmmcore.refine.loop.iterate` with a plan (:func:`focused_plan`) whose
``shape_gmm`` hook is :func:`gmmcore.gmm.focus.widen_outside` (by default σ'² = σ²/(0.25 + 0.75·M(c))
for every Gaussian whose centre lies where the focus mask M < 1 — the reference code's rule; the
paper's σ' = σ/(…) with ``width_rule="sigma"``; applied after every fit and every resume load, never
saved, never compounding).  Everything else is global refinement's gold standard: per
half its own GMM, fitted to its own half map; particles of a half aligned only to it; the pose
prior centred on the poses the focused run *started from*; the band follows the measured
(FSC-mask) resolution.  Reports: every iteration's FSC unmasked, with the FSC mask, and within
the focus mask (the plan's ``extra_report``: ``resolution_focus`` and ``fsc_focus``, also for
the start).

:func:`refine_focused` is the call every focused-like driver makes: ``gmmcore refine-focused``
(:mod:`.focused`), each patch of ``gmmcore refine-patches`` (:mod:`.patches`) and the focused
stage of conformation to pose (:mod:`gmmcore.heter.conf2pose`).

Run directory (as a global run; iteration 0 = the start state, copied in so the directory is
self-contained and a resumed or remote run needs nothing else):

    params.json, run.log, focus_mask.mrc, fsc_mask.mrc
    iter000/  poses.npz, half1.mrc, half2.mrc, report.json (the start)
    iterNNN/  as in a global run
    final/    particles.star, half1.mrc, half2.mrc, map.mrc, GMMs, pose_changes.npz (vs the start)
    summary.json   RunSummary (kind "focused", "patch" or "conf2pose"); final.focus_mask, .fsc_mask
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional, Union

import numpy as np

from .. import __version__, defaults
from ..backend import get_backend
from ..errors import InputError
from ..fsc import fsc_masked, half_map_report, resolution_at
from ..gmm.focus import widen_outside
from ..gmm.precision import pose_precisions, region_of
from ..grids import FourierGrid
from ..io.maps import read_map, write_map
from ..masks import auto_fsc_mask
from ..particles import HalfPair, ParticleTable, check_geometry, check_split
from ..summary import HalfMapReport, ReimposedMaps, RunKind, RunSummary
from ..symmetry import symmetry_name
from .drive import AlignmentOptions, choose_device, fingerprint, finished, new_summary, run_iterations, \
    state_fingerprint
from .rundir import RunDir
from .start import FSC_MASK, iteration0
from .state import IterationPlan, RefinementState, band_source, follow_fsc

log = logging.getLogger("gmmcore.refine")

FOCUS_MASK = "focus_mask.mrc"

# Parameters that define a focused run's result (with the fingerprints of its start and masks).
IDENTITY = ("particles_hash", "start_fingerprint", "focus_mask_fingerprint", "fsc_mask_fingerprint", "fit_mask_fingerprint",
            "ngauss", "maxres", "minres", "sym", "steps", "lr_angle", "lr_shift", "seed", "pad", "ring_weight",
            "prior_angle", "prior_shift", "width_rule", "mask_level", "band_rule", "align_from", "drop_worst", "gmm_fit", "gmm_start",
            "gmm_local_res", "gmm_n_scale", "gmm_density")


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
    width_rule: str = defaults.WIDTH_RULE  # "variance" (σ'²=σ²/d) or "sigma" (σ'=σ/d), gmm.focus
    mask_level: float = defaults.MASK_LEVEL  # L in d = L + (1 − L)·M
    band_rule: str = defaults.BAND_RULE  # "fsc0143" or "fsc01" (0.9 × the FSC-0.1 resolution)
    align_from: str = defaults.ALIGN_FROM  # "previous" or "prior": where each iteration's search starts
    drop_worst: float = defaults.DROP_WORST  # fraction of each half's lowest-scoring particles not reconstructed
    gmm_fit: str = defaults.GMM_FIT  # "fourier" or "hermitian": the GMM fit's transform
    gmm_start: str = defaults.GMM_START  # "seed" or "warm": iterations ≥ 2 from the previous GMM of the half
    gmm_local_res: str = defaults.GMM_LOCAL_RES  # "on": GMMs blurred where the local resolution is coarser
    gmm_n_scale: float = defaults.GMM_N_SCALE  # seeded GMMs: the estimated number of Gaussians × this
    gmm_density: str = defaults.GMM_DENSITY  # "local": gmm_n_scale where the map is sharp, ×1 where coarser


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


def focus_report(mask: np.ndarray, apix: float):
    """The plan's ``extra_report``: FSC of the two half maps within ``mask`` (phase-randomisation
    corrected, 0.143) → {"resolution_focus": Å, "fsc_focus": [...]} (frequencies as the main FSC)."""
    def report(maps: HalfPair) -> dict:
        freq, curve = fsc_masked(maps[1], maps[2], apix, mask)
        return {"resolution_focus": resolution_at(freq, curve), "fsc_focus": [float(v) for v in curve]}
    return report


def focused_plan(table: ParticleTable, start: RefinementState, focus_mask: np.ndarray, params: FocusedParams,
                 fsc_mask: np.ndarray, fit_mask: Optional[np.ndarray] = None) -> IterationPlan:
    """The plan of a focused run: widen outside ``focus_mask``, prior on the start poses, focus FSC."""
    box, apix = check_geometry(table)
    return IterationPlan(sym=params.sym or "C1", fsc_mask=fsc_mask, fit_mask=fit_mask,
                         band=follow_fsc(params.minres, apix, params.maxres), align=params.align_settings(),
                         shape_gmm=widen_outside(focus_mask, apix, params.mask_level, params.width_rule), prior=start.poses, ngauss=params.ngauss,
                         seed=params.seed, pad=params.pad, extra_report=focus_report(focus_mask, apix),
                         band_source=band_source(params.band_rule, fsc_mask, apix), align_from=params.align_from,
                         drop_worst=params.drop_worst, gmm_fit=params.gmm_fit, gmm_start=params.gmm_start, gmm_local_res=params.gmm_local_res,
                         gmm_n_scale=params.gmm_n_scale, gmm_density=params.gmm_density)


def refine_focused(table: ParticleTable, start: RefinementState, focus_mask: np.ndarray, params: FocusedParams,
                   fsc_mask: Optional[np.ndarray] = None, fit_mask: Optional[np.ndarray] = None, backend=None,
                   kind: RunKind = RunKind.FOCUSED, mode: Optional[dict] = None, device: Optional[str] = None
                   ) -> RunSummary:
    """Run (or continue) ``params.iterations`` focused iterations in ``params.out``.

    ``table``: the particles (poses = ``start.poses``, half sets 1/2); ``start``: the state to
    start from (half maps, measured resolution; its iteration number is ignored); ``focus_mask``:
    float (box,)*3 in 0..1 on the particles' grid; ``fsc_mask``: mask of the FSC (default: the
    automatic mask of the start maps); ``fit_mask``: multiplies each half map before its GMM is
    fitted (None: the whole map, as the paper).  Re-running with the same inputs continues a killed
    run; different inputs into the same directory → InputError.  Returns the run's summary (also
    ``params.out/summary.json``) of kind ``kind``, with ``mode`` (typed RunSummary fields of that
    kind, e.g. ``start``, ``patch``/``parent``, ``conversion``) set on it.
    ``device``: the description of a device already chosen (a worker's); None: choose it here.
    """
    box, apix = check_geometry(table)
    check_split(table)
    params = replace(params, sym=symmetry_name(params.sym or "C1"),
                     reimpose=params.reimpose and symmetry_name(params.reimpose, "--reimpose"))
    focus_mask = _checked_focus(focus_mask, box, params.mask)
    if fsc_mask is None:
        fsc_mask = auto_fsc_mask(start.half_maps[1], start.half_maps[2], apix)
    fsc_mask = np.asarray(fsc_mask, np.float32)
    backend = backend or get_backend(params.backend)
    record = asdict(params)
    record.update(particles_hash=table.content_hash(), start_fingerprint=state_fingerprint(start),
                  focus_mask_fingerprint=fingerprint(focus_mask), fsc_mask_fingerprint=fingerprint(fsc_mask),
                  fit_mask_fingerprint=fingerprint(fit_mask))
    run = RunDir.create_or_continue(params.out, record, IDENTITY)
    params = replace(params, **run.inherited)  # an older run keeps what it was made with
    old = finished(run.path, params.iterations)
    if old is not None:
        log.info("%s: already complete (%d iterations)", run.path, params.iterations)
        if params.reimpose and (old.final.reimposed is None or old.final.reimposed.sym != params.reimpose):
            old.final.reimposed = _reimpose(run, old, focus_mask, start, fsc_mask, apix, params.reimpose)
            old.save()
        return old
    for name, m in ((FOCUS_MASK, focus_mask), (FSC_MASK, fsc_mask)):
        if not (run.path / name).is_file():  # same content on a resume (fingerprints in the identity)
            write_map(run.path / name, m, apix)
    return _run(table, start, focus_mask, fsc_mask, fit_mask, params, record, run, backend, kind, mode or {}, device)


def focus_precision(table: ParticleTable, start: RefinementState, focus_mask: np.ndarray, plan: IterationPlan,
                    backend) -> Optional[dict]:
    """The Cramér–Rao bound of a per-particle pose of the focus region and of the whole particle
    (:func:`gmmcore.gmm.precision.pose_precision`) at the run's first band, from half 1's GMM of the
    start → {"region": PosePrecision, "particle": PosePrecision}, logged; None when the start
    carries no GMM (a start from particles and half maps) or the region holds no Gaussian."""
    if start.gmms is None:
        return None
    box, apix = check_geometry(table)
    if len(region_of(start.gmms[1], focus_mask, apix)) == 0:  # no Gaussian in the region: no images read
        return None
    band = plan.band_of(start)
    grid = FourierGrid(box, apix, band.resolution_A, band.minres_A)
    rows = table.half_rows()[1]
    region, whole = pose_precisions(start.gmms[1], table, rows, start.poses, grid, backend, [focus_mask, None])
    if region is None:
        return None
    log.info("pose precision at %.2f Å (Cramér–Rao bound, %d particles of half 1): focus region (%d Gaussians, "
             "%.0f%% of the mass) ±%.1f° / %.2f px per particle; whole particle ±%.1f° / %.2f px", band.resolution_A,
             region.n_particles, region.region_gaussians, 100 * region.region_mass, region.angle_deg,
             region.shift_px, whole.angle_deg, whole.shift_px)
    return {"region": region, "particle": whole}


def precision_warning(region, prior_angle: Optional[float], kind: RunKind = RunKind.FOCUSED) -> Optional[str]:
    """The warning of a focus region whose per-particle pose bound exceeds the pose prior (the
    motion a local refinement is meant to follow; 3° without one), else None.  ``kind``: the run's
    (conformation to pose is already the pooling route: its warning says what its focused stage can do)."""
    limit = float(prior_angle or defaults.PRIOR_ANGLE_DEG)
    if region.angle_deg <= limit:
        return None
    if RunKind.of(kind) == RunKind.CONF2POSE:
        return (f"the target region carries too little signal to align each particle on its own: its pose can be "
                f"fixed at best to ±{region.angle_deg:.1f}° per particle at this resolution and noise (Cramér–Rao "
                f"bound), more than the ±{limit:g}° the focused iterations after the conversion follow; they will "
                "mostly add noise to the converted poses — consider --focus-iter 0")
    return (f"the focus region carries too little signal to align each particle on its own: its pose can be "
            f"fixed at best to ±{region.angle_deg:.1f}° per particle at this resolution and noise (Cramér–Rao bound), "
            f"more than the ±{limit:g}° a local refinement follows; focused refinement will mostly add noise to "
            "its poses — a larger region, or heterogeneity followed by conformation to pose (which pool "
            "particles), suit it better")


def _checked_focus(focus_mask, box: int, path) -> np.ndarray:
    focus_mask = np.asarray(focus_mask, np.float32)
    if focus_mask.shape != (box,) * 3:
        raise InputError(f"focus mask is {focus_mask.shape}, particles need ({box}, {box}, {box})",
                         path=path, field="--mask")
    if not float(focus_mask.max()) > 0:
        raise InputError("the focus mask is empty (all 0)", path=path, field="--mask")
    return focus_mask


def _run(table, start, focus_mask, fsc_mask, fit_mask, params: FocusedParams, record: dict, run: RunDir, backend,
         kind: RunKind, mode: dict, device: Optional[str]) -> RunSummary:
    box, apix = check_geometry(table)
    warnings = []
    if device is None:
        device, warnings = choose_device(backend, params.gpu, params.cpu, params.threads)
    rows = table.half_rows()
    log.info("gmmcore %s %s refinement: %d particles (half 1: %d, half 2: %d), box %d, %.3f Å/px, %s, "
             "focus mask %.0f voxels, device %s", __version__, kind, len(table), rows[1].size, rows[2].size, box,
             apix, params.sym, float(focus_mask.sum()), device)
    plan = focused_plan(table, start, focus_mask, params, fsc_mask, fit_mask)
    precision = focus_precision(table, start, focus_mask, plan, backend)
    if precision is not None:
        note = precision_warning(precision["region"], params.prior_angle, kind)
        if note:
            log.warning("WARNING: %s", note)
            warnings = [*warnings, note]
    begin = iteration0(table, run, fsc_mask=fsc_mask, start=start, extra_report=plan.extra_report)
    start, initial = begin.state, HalfMapReport.from_json(begin.report)
    summary = new_summary(kind, record, table, initial, run, device, warnings)
    for key, value in mode.items():
        setattr(summary, key, value)
    summary.pose_precision = precision
    state = run_iterations(table, start, plan, backend, run, summary, params.iterations, on_record=lambda rec: log.info(
        "  iteration %d: within the focus mask %.2f Å", rec.iteration, float(rec.report.resolution_focus)))
    summary.final = run.finish(table, state, start.poses, start.resolution_A)
    last = summary.iterations[-1].report if summary.iterations else initial
    summary.final.focus_mask, summary.final.fsc_mask = FOCUS_MASK, FSC_MASK
    summary.final.resolution_focus = float(last.resolution_focus)
    summary.final.resolution_focus_initial = float(initial.resolution_focus)
    if params.reimpose:
        summary.final.reimposed = _reimpose(run, summary, focus_mask, start, fsc_mask, apix, params.reimpose)
    summary.save()
    log.info("done: %.2f Å -> %.2f Å (FSC mask), %.2f Å -> %.2f Å (focus mask); results in %s",
             initial.resolution, summary.resolution_final, initial.resolution_focus,
             summary.final.resolution_focus, run.path / "final")
    return summary


def _reimpose(run: RunDir, summary: RunSummary, focus_mask, start: RefinementState, fsc_mask, apix: float,
              sym: str) -> ReimposedMaps:
    """final/reimposed_half{1,2}.mrc, reimposed_map.mrc: the focused region's symmetry copies
    averaged, weighted by the rotated focus masks (:func:`gmmcore.composite.reimpose`), the start
    maps filling the rest; returns their record (files relative to the run directory)."""
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
    return ReimposedMaps(sym=sym, half1="final/reimposed_half1.mrc", half2="final/reimposed_half2.mrc",
                         map="final/reimposed_map.mrc", resolution=rep["resolution"],
                         resolution_unmasked=rep["resolution_unmasked"])
