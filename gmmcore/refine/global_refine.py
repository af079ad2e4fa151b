"""GMM global pose refinement (gold standard): the driver of ``gmmcore refine``.

Iteration 0 reconstructs the half maps at the input poses; iterations 1..n are
:func:`gmmcore.refine.loop.iterate` with the global plan: no GMM shaping, the target resolution
follows the measured FSC (capped by ``maxres``), the pose prior is centred on the input poses.
A user's ``--mask`` must overlap the density of iteration 0's half maps (the first map of the
particle there is): else InputError, and the run directory is discarded.
The run directory (:mod:`gmmcore.refine.rundir`) makes every step resumable: re-running the same
command continues a killed run.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional, Union

from .. import __version__, defaults
from ..backend import get_backend
from ..fourier import lowpass
from ..errors import InputError
from ..io.maps import read_map_on_grid
from ..io.star import read_star
from ..masks import check_in_particle_sphere, check_overlap
from ..particles import (HalfPair, ParticleTable, assign_split, check_geometry, check_split,
                         min_particles_per_half)
from ..summary import HalfMapReport, RunKind, RunSummary
from .drive import AlignmentOptions, choose_device, new_summary, read_user_mask, run_iterations
from .rundir import RunDir
from .start import iteration0
from .state import IterationPlan, band_source, follow_fsc

log = logging.getLogger("gmmcore.refine")

# Parameters that define the result: a run directory with other values cannot be continued.
IDENTITY = ("particles", "particles_hash", "ref", "ngauss", "maxres", "minres", "sym", "mask", "steps", "lr_angle",
            "lr_shift", "seed", "new_split", "pad", "ring_weight", "prior_angle", "prior_shift", "band_rule", "align_from", "drop_worst", "gmm_fit", "gmm_start",
            "gmm_local_res", "gmm_n_scale", "gmm_density")


@dataclass
class RefineParams(AlignmentOptions):
    """``gmmcore refine`` parameters (resolutions in Å, angles in degrees, shifts in pixels)."""

    particles: str
    out: str
    ref: Optional[str] = None
    ref_lowpass: float = 20.0  # Å
    iterations: int = 5
    ngauss: Optional[int] = None
    maxres: Optional[float] = None  # Å: finest target resolution allowed
    minres: float = 25.0  # Å: coarsest ring used by the FRC
    sym: str = "C1"
    mask: Optional[str] = None
    batch: Union[int, str] = 16  # particles per device batch, or "auto" (largest fitting the device memory)
    chunk: int = 20000
    steps: int = 10
    lr_angle: float = 0.5  # degrees per Adam step
    lr_shift: float = 0.25  # pixels per Adam step
    ring_weight: str = "ssnr"  # "ssnr" or "uniform" (the paper's plain average over rings)
    band_rule: str = defaults.BAND_RULE  # "fsc0143" or "fsc01" (0.9 × the FSC-0.1 resolution)
    align_from: str = defaults.ALIGN_FROM  # "previous" or "prior": where each iteration's search starts
    drop_worst: float = defaults.DROP_WORST  # fraction of each half's lowest-scoring particles not reconstructed
    gmm_fit: str = defaults.GMM_FIT  # "fourier" or "hermitian": the GMM fit's transform
    gmm_start: str = defaults.GMM_START  # "seed" or "warm": iterations ≥ 2 from the previous GMM of the half
    gmm_local_res: str = defaults.GMM_LOCAL_RES  # "on": GMMs blurred where the local resolution is coarser
    gmm_n_scale: float = defaults.GMM_N_SCALE  # seeded GMMs: the estimated number of Gaussians × this
    gmm_density: str = defaults.GMM_DENSITY  # "local": gmm_n_scale where the map is sharp, ×1 where coarser
    prior_angle: Optional[float] = 3.0  # degrees: MAP pose prior centred on the input poses (None: off)
    prior_shift: Optional[float] = 1.0  # pixels
    gpu: Optional[List[int]] = None
    cpu: bool = False
    seed: int = 0
    new_split: bool = False
    pad: int = 2
    threads: Optional[int] = None  # CPU threads (None: all cores)
    force: bool = False  # run below the minimum particles per half set
    backend: str = "tf"  # "tf" (TensorFlow, the CPU default) or "jax"
    particles_hash: Optional[str] = None  # content of the input (set by run_global)
    version: str = field(default=__version__)


def run_global(p: RefineParams, executor=None, table: Optional[ParticleTable] = None) -> RunSummary:
    """Run (or continue) a global refinement; returns its summary (also DIR/summary.json).

    ``executor`` (:mod:`gmmcore.parallel`): where the work units run — default this process on the
    device chosen by ``p.gpu`` / ``p.cpu``; a Dask executor's workers choose their own devices and
    this process then stays off the GPUs.  ``table``: the particles of ``p.particles`` as
    ``read_star(p.particles)`` gives them, when the caller has read them already (a large star is
    then parsed once); default: read here."""
    # Check every input before anything is written, so a corrected command can use the same --out.
    if table is None:
        table = read_star(p.particles)
    table = table.with_shared_values()  # one-value columns (voltage, box, ...) cost nothing per particle
    box, apix = check_geometry(table)
    p = replace(p, particles_hash=table.content_hash())
    new_split = assign_split(table, p.new_split, seed=p.seed) == "new-random"
    rows = check_split(table)
    n_min = min_particles_per_half(box)
    if min(r.size for _, r in rows.items()) < n_min and not p.force:
        raise InputError(f"{rows[1].size} / {rows[2].size} particles in half sets 1 / 2: a gold-standard refinement "
                         f"at box {box} needs at least {n_min} per half (π·box/2 views fill Fourier space to "
                         "Nyquist); use --force to refine anyway", path=p.particles, field="rlnRandomSubset")
    finest = max(p.maxres or 0.0, 2.0 * apix * 1.05)
    if p.minres <= finest:
        raise InputError(f"{p.minres:g} Å is not coarser than the finest target resolution ({finest:.2f} Å): "
                         "no FRC rings would be left", field="--minres")
    user_mask = read_user_mask(p.mask, box, apix) if p.mask else None
    if user_mask is not None:  # its overlap with the density is checked once iteration 0 has the half maps
        check_in_particle_sphere(user_mask, path=p.mask)
    ref = read_map_on_grid(p.ref, box, apix, what="reference", field="--ref") if p.ref else None

    backend = get_backend(p.backend)
    run = RunDir.create_or_continue(p.out, asdict(p), IDENTITY)
    p = replace(p, **run.inherited)  # an older run keeps what it was made with
    try:
        return _run(p, table, run, backend, box, apix, rows, new_split, user_mask, ref, executor)
    except InputError:
        run.discard()  # bad input found mid-run: leave nothing a later run could trust
        raise


def _run(p, table, run, backend, box, apix, rows, new_split, user_mask, ref, executor) -> RunSummary:
    if executor is None or executor.in_process:
        device, warnings = choose_device(backend, p.gpu, p.cpu, p.threads)
    else:  # the driver only writes files and measures FSCs: it keeps off the workers' GPUs
        backend.describe_devices(None, cpu_only=True, threads=p.threads)
        device, warnings = executor.describe(), []
    log.info("backend %s on %s", backend.name, device)
    log.info("gmmcore %s refine: %d particles (half 1: %d, half 2: %d), box %d, %.3f Å/px, %s, device %s",
             __version__, len(table), rows[1].size, rows[2].size, box, apix, p.sym, device)
    if new_split:
        log.info("NOTE: %s", table.meta.get("split_note") or f"made a new random half split (seed {p.seed})")

    # Only a user's mask may shape the GMMs: the automatic mask is made from both halves and serves
    # the FSC alone, so it must not touch either half's model.
    begin = iteration0(table, run, p.sym, p.pad, p.chunk, fsc_mask=user_mask, executor=executor, backend=backend)
    if user_mask is not None:  # the particle's map is known only now: the mask must overlap its density
        maps = begin.state.half_maps
        check_overlap(user_mask, 0.5 * (maps[1] + maps[2]), apix, path=p.mask, field="--mask")
    plan = IterationPlan(sym=p.sym, fsc_mask=begin.fsc_mask, fit_mask=user_mask,
                         band=follow_fsc(p.minres, apix, p.maxres), align=p.align_settings(),
                         prior=table.poses, ngauss=p.ngauss, seed=p.seed, pad=p.pad,
                         band_source=band_source(p.band_rule, begin.fsc_mask, apix), align_from=p.align_from,
                         drop_worst=p.drop_worst, gmm_fit=p.gmm_fit, gmm_start=p.gmm_start, gmm_local_res=p.gmm_local_res,
                         gmm_n_scale=p.gmm_n_scale, gmm_density=p.gmm_density)
    summary = new_summary(RunKind.GLOBAL, asdict(p), table, HalfMapReport.from_json(begin.report), run, device,
                          warnings)
    summary.split = "new-random" if new_split else "input"
    if new_split and table.meta.get("split_note"):
        summary.split_note = table.meta["split_note"]
    state = begin.state
    if ref is not None:  # the first GMMs come from the starting map, not from the input half maps
        log.info("first GMMs from --ref low-passed to %.1f Å", p.ref_lowpass)
        ref_lp = lowpass(ref, apix, p.ref_lowpass)
        state = replace(state, half_maps=HalfPair(ref_lp, ref_lp), resolution_A=max(state.resolution_A, p.ref_lowpass))
    state = run_iterations(table, state, plan, backend, run, summary, p.iterations, executor=executor)
    if not summary.iterations:
        state = begin.state
    summary.final = run.finish(table, state, table.poses, begin.state.resolution_A)
    summary.save()
    log.info("done: %.2f Å -> %.2f Å; results in %s", summary.resolution_initial, summary.resolution_final,
             run.path / "final")
    return summary
