"""What every refinement driver shares: alignment options, the device, a user's mask,
fingerprints, the one run summary, "run N iterations into it", the one finished-run rule.

A driver (global, focused, patches, conformation to pose) is a plan (:class:`.state.IterationPlan`
and its start) plus calls into this module and :mod:`.start`; drivers never import each other.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..backend import PoseSettings
from ..gmm.align import AlignSettings
from ..io.maps import read_map_on_grid
from ..masks import check_mask
from ..particles import ParticleTable
from ..summary import HalfMapReport, IterationRecord, RunKind, RunSummary
from . import loop
from .rundir import RunDir
from .state import IterationPlan, RefinementState

log = logging.getLogger("gmmcore.refine")


class AlignmentOptions:
    """Pose-refinement settings from a parameter dataclass with the fields ``steps``, ``lr_angle``
    (degrees), ``lr_shift`` (pixels), ``prior_angle``, ``prior_shift``, ``ring_weight``, ``batch``
    and ``chunk`` (shared by the global, focused and patch parameters)."""

    def pose_settings(self) -> PoseSettings:
        return PoseSettings(steps=self.steps, lr_angle_deg=self.lr_angle, lr_shift_px=self.lr_shift,
                            prior_angle_deg=self.prior_angle, prior_shift_px=self.prior_shift)

    def align_settings(self) -> AlignSettings:
        return AlignSettings(pose=self.pose_settings(), ring_weight=self.ring_weight, batch=self.batch,
                             chunk=self.chunk)


def choose_device(backend, gpu: Optional[List[int]], cpu: bool, threads: Optional[int]) -> Tuple[str, List[str]]:
    """This process's device through ``backend`` → (its description, warnings): a GPU asked for that
    the backend does not see is a warning, logged here (the run goes on on the CPU)."""
    device = backend.describe_devices(gpu, cpu_only=cpu, threads=threads)
    from ..backend import no_gpu_warning

    warning = no_gpu_warning(gpu, cpu, device, backend.name)
    warnings = [warning] if warning else []
    for w in warnings:
        log.warning("WARNING: %s", w)
    return device, warnings


def read_user_mask(path, box: int, apix: float, what: str = "mask", field: str = "--mask") -> np.ndarray:
    """A mask the user gave: on the particles' grid and a usable soft 0..1 mask
    (:func:`gmmcore.masks.check_mask`, always)."""
    return check_mask(read_map_on_grid(path, box, apix, what=what, field=field), path=path, field=field)


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


def state_fingerprint(state: RefinementState) -> str:
    """The fingerprint of a start state: its poses and both half maps."""
    return fingerprint(state.poses.rotation, state.poses.origin_A, state.half_maps[1], state.half_maps[2])


def finished(folder, iterations: int) -> Optional[RunSummary]:
    """The summary of the run in ``folder`` when it finished all ``iterations``, else None (the
    one rule: final outputs written and every iteration recorded)."""
    f = Path(folder) / "summary.json"
    if not f.is_file():
        return None
    s = RunSummary.load(f)
    return s if s.final is not None and len(s.iterations) == iterations else None


def new_summary(kind: RunKind, params: dict, table: ParticleTable, initial: HalfMapReport, run: RunDir,
                device: str = "", warnings: Sequence[str] = ()) -> RunSummary:
    """The one assembly of a run's summary at its start (its particles per half set)."""
    return RunSummary(kind=kind, params=params, device=device,
                      n_particles={str(h): int(r.size) for h, r in table.half_rows().items()}, initial=initial,
                      directory=str(run.path), warnings=list(warnings))


def run_iterations(table: ParticleTable, state: RefinementState, plan: IterationPlan, backend, run: RunDir,
                   summary: RunSummary, iterations: int, executor=None,
                   on_record: Optional[Callable[[IterationRecord], None]] = None) -> RefinementState:
    """Iterations 1..``iterations`` of :func:`.loop.iterate` from ``state``, each record appended
    to ``summary`` and saved (resumable: a complete iteration is loaded); → the last state.  Fewer
    iterations than the folder has finished: the run ends at the last one asked for, and the later
    ones stay on disk (asking for them again loads them)."""
    for i in range(1, iterations + 1):
        state, record = loop.iterate(table, state, plan, backend, run.iteration(i), executor=executor)
        if on_record is not None:
            on_record(record)
        summary.iterations.append(record)
        summary.save()
    later = run.finished_iterations_after(iterations)
    if later > iterations:
        log.info("%s: ends at iteration %d as asked; iterations %d-%d of an earlier, longer run are kept (asking for "
                 "%d iterations again loads them)", run.path, iterations, iterations + 1, later, later)
    return state
