"""A refinement run directory: identity, per-iteration stores, resume, final outputs.

Layout (``--out DIR``; every file written atomically, the record of a step written last):

    params.json                 the parameters ("kind": the verb's kind of run, see
                                gmmcore.safewrite.claim_output); a run continues only with the same
                                kind and the same defining parameters
    .gmmcore.lock               while a command writes the run: its PID and host
    run.log                     the log
    mask_auto.mrc               the automatic FSC mask (when no --mask), made at iteration 0
    iter000/                    input poses: half1.mrc, half2.mrc, report.json
    iterNNN/                    gmm_half{1,2}.gmm.npz + gmm_half{1,2}.json (fit report: written
                                second, marks the GMM done), align_half{h}_ring_weights.npz,
                                align_half{h}_chunkNNNN.npz (alignment checkpoints), poses.npz,
                                half1.mrc, half2.mrc, report.json (last: the iteration is complete)
    final/                      particles.star (image names resolve from final/: absolute paths),
                                half1.mrc, half2.mrc, map.mrc,
                                gmm_half{1,2}.gmm.npz/.pdb, pose_changes.npz
    summary.json                :class:`gmmcore.summary.RunSummary`

A step whose marker file is absent is redone; nothing of a complete step is ever rewritten.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..gmm.align import ChunkCheckpoints
from ..gmm.model import GMM
from ..io.maps import read_map, write_map
from ..particles import HalfPair, Poses
from ..safewrite import KIND_VERBS, claimed_kind, is_lock, write_json
from ..summary import SUMMARY_NAME, FinalFiles, IterationRecord, RunSummary
from .state import RefinementState

log = logging.getLogger("gmmcore.refine")


def setup_logging(out: Path) -> None:
    """Log to DIR/run.log and stdout (time-stamped lines)."""
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_gmm_out", None) == str(out) for h in log.handlers):
        for h in list(log.handlers):
            log.removeHandler(h)
        fh = logging.FileHandler(out / "run.log")
        fh._gmm_out = str(out)
        sh = logging.StreamHandler(sys.stdout)
        sh._gmm_out = str(out)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        fh.setFormatter(fmt)
        sh.setFormatter(fmt)
        log.addHandler(fh)
        log.addHandler(sh)
        log.propagate = False


class IterationStore:
    """The files of one iteration (``iterNNN/``); iteration 0 holds only half maps and a report."""

    def __init__(self, folder: Path, iteration: int):
        self.folder = Path(folder)
        self.iteration = int(iteration)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def complete(self) -> bool:
        return (self.folder / "report.json").exists()

    # ---- GMMs: the .gmm.npz first, its fit report second (the marker)
    def load_gmm(self, h: int) -> Optional[Tuple[GMM, dict]]:
        gfile, rfile = self.folder / f"gmm_half{h}.gmm.npz", self.folder / f"gmm_half{h}.json"
        if not (gfile.exists() and rfile.exists()):
            return None
        return GMM.load(gfile), json.loads(rfile.read_text())

    def save_gmm(self, h: int, gmm: GMM, report: dict) -> None:
        gmm.save(self.folder / f"gmm_half{h}.gmm.npz")
        write_json(self.folder / f"gmm_half{h}.json", report)

    def checkpoints(self, h: int) -> ChunkCheckpoints:
        return ChunkCheckpoints(self.folder, f"align_half{h}")

    # ---- poses and half maps
    def save_poses(self, poses: Poses) -> None:
        poses.save(self.folder / "poses.npz")

    def save_half_maps(self, maps: HalfPair, apix: float) -> None:
        for h, m in maps.items():
            write_map(self.folder / f"half{h}.mrc", m, apix)

    def load_half_maps(self) -> HalfPair:
        return HalfPair.build(lambda h: read_map(self.folder / f"half{h}.mrc")[0])

    # ---- the record (written last)
    def finish(self, record) -> None:
        data = record.to_json() if hasattr(record, "to_json") else record
        write_json(self.folder / "report.json", data)

    def report(self) -> dict:
        return json.loads((self.folder / "report.json").read_text())

    def record(self) -> IterationRecord:
        return IterationRecord.from_json(self.report())

    def load_state(self) -> RefinementState:
        """The state a complete iteration ended in (poses, half maps, resolution, GMMs)."""
        rec = self.record()
        gmms = HalfPair.build(lambda h: self.load_gmm(h)[0])
        return RefinementState(self.iteration, Poses.load(self.folder / "poses.npz"), self.load_half_maps(),
                               rec.resolution, gmms)


class RunDir:
    """One run directory (see the module notes)."""

    def __init__(self, path):
        self.path = Path(path)
        self.created = False
        self.inherited: dict = {}  # legacy values an older run keeps (create_or_continue)

    # What a run made before an identity parameter existed was made with: continuing such a run keeps
    # it (``inherited``), so its remaining iterations are those of the run it is.
    LEGACY_VALUES = {"band_rule": "fsc0143", "gmm_local_res": "off", "gmm_start": "seed", "patch_shape": "sphere",
                     "gmm_n_scale": 1.0, "gmm_density": "uniform"}

    @classmethod
    def create_or_continue(cls, path, params: dict, identity: Sequence[str],
                           nested_runs: Sequence[str] = (), kind: Optional[str] = None) -> "RunDir":
        """Create ``path`` (or continue the run in it): its params.json must hold a run of the same
        kind and agree on every ``identity`` parameter, else InputError (a parameter a run of an
        older version did not record is not compared; a run of unknown kind that shares no identity
        parameter is another kind of run).  ``kind`` (default: the kind the command claimed ``path``
        for, :func:`gmmcore.safewrite.claim_output`) is recorded in params.json.  Removes
        temporaries a killed run left — except inside sub-folders matching a ``nested_runs`` glob
        (e.g. "patch_*"): those are run directories of their own, possibly written by another
        process right now, and clean themselves.  Starts the log.  ``run.inherited``: the
        :attr:`LEGACY_VALUES` of identity parameters an older run — one whose params.json records some of
        ``identity`` — did not record, which it keeps (the caller runs with them; params.json records them)."""
        run = cls(path)
        run.inherited = {}
        run.nested_runs = tuple(nested_runs)
        kind = kind or claimed_kind(run.path)
        if kind is not None:
            params = {"kind": kind, **{k: v for k, v in params.items() if k != "kind"}}
        pfile = run.path / "params.json"
        old = None
        if pfile.exists():
            try:
                old = json.loads(pfile.read_text())
            except ValueError:
                raise InputError("params.json is unreadable; use a new --out", path=pfile) from None
            old_kind = old.get("kind") if isinstance(old.get("kind"), str) else None
            if kind is not None and old_kind is not None and old_kind != kind:
                raise InputError(f"holds a `gmmcore {KIND_VERBS.get(old_kind, old_kind)}` run (kind {old_kind!r}), "
                                 f"not a {kind!r} run: use a new --out", path=run.path)
            if old_kind is None and identity and not any(k in old for k in identity):
                raise InputError("holds another kind of gmmcore run (none of this run's parameters in its "
                                 "params.json): use a new --out", path=run.path)
            # only a record of this kind of run is an older run; a placeholder that records none of its
            # parameters (conformation to pose claims its folder before its focused stage) is a new one
            older_run = any(k in old for k in identity)
            run.inherited = {k: v for k, v in cls.LEGACY_VALUES.items()
                             if older_run and k in identity and k not in old and k in params and params[k] != v}
            params = {**params, **run.inherited}
            diff = [k for k in identity if k in old and old.get(k) != params.get(k)]
            if diff:
                what = ("the particles' content changed" if diff == ["particles_hash"] else
                        f"different parameters ({', '.join(diff)})")
                raise InputError(f"holds a run with {what}; use a new --out, or the same parameters and "
                                 "input to continue", path=run.path)
        elif run.path.is_dir() and any(p.name != "run.log" and not is_lock(p.name) for p in run.path.iterdir()):
            raise InputError("is not empty and holds no gmmcore run (no params.json); use a new or empty --out",
                             path=run.path)
        run.created = old is None and not run.path.exists()
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(pfile, params)
        setup_logging(run.path)
        if old is not None:
            log.info("continuing the run in %s", run.path)
            for k, v in run.inherited.items():
                log.info("NOTE: this run was made before --%s existed: it keeps %s", k.replace("_", "-"), v)
        run.remove_temporaries()
        return run

    def remove_temporaries(self) -> int:
        """Delete the temporaries of writes a kill interrupted (safewrite's names), in the run
        directory and its sub-folders; returns how many."""
        from ..safewrite import remove_stale_temporaries

        nested = [p for pattern in getattr(self, "nested_runs", ()) for p in self.path.glob(pattern) if p.is_dir()]
        stray = []
        for folder in [self.path] + sorted(p for p in self.path.rglob("*") if p.is_dir()):
            if any(folder == n or n in folder.parents for n in nested):
                continue
            stray += remove_stale_temporaries(folder)
        if stray:
            log.info("removed %d temporary file(s) left by an interrupted run", len(stray))
        return len(stray)

    def discard(self) -> None:
        """Remove the run directory when this invocation created it (a run refused mid-way by
        bad input leaves nothing behind that a later run could trust)."""
        if getattr(self, "created", False):
            import shutil

            for h in list(log.handlers):
                if getattr(h, "_gmm_out", None) == str(self.path):
                    h.close()
                    log.removeHandler(h)
            shutil.rmtree(self.path, ignore_errors=True)

    def params(self) -> dict:
        return json.loads((self.path / "params.json").read_text())

    def iteration(self, i: int) -> IterationStore:
        return IterationStore(self.path / f"iter{i:03d}", i)

    def finished_iterations_after(self, i: int) -> int:
        """The last iteration > ``i`` whose folder is complete with every one between (``i`` if none),
        read without creating anything."""
        while (self.path / f"iter{i + 1:03d}" / "report.json").exists():
            i += 1
        return i

    @property
    def auto_mask_path(self) -> Path:
        return self.path / "mask_auto.mrc"

    def summary(self) -> RunSummary:
        return RunSummary.load(self.path / SUMMARY_NAME)

    # ---- the end of a run, and what a later run starts from
    def finish(self, table, state: RefinementState, start: Poses, initial_resolution: float) -> FinalFiles:
        """Write ``final/``: the particles with the final poses, half maps, the average map
        low-passed to the final resolution, the GMMs (.gmm.npz + .pdb) and per-particle pose
        changes from ``start``."""
        from ..fourier import lowpass
        from ..io.stacks import names_resolving_from
        from ..io.star import write_star

        fin = self.path / "final"
        fin.mkdir(exist_ok=True)
        apix = float(table.apix[0])
        final = table.with_poses(state.poses)
        final.image_name = names_resolving_from(table, fin)  # absolute unless the stack is inside final/
        write_star(final, fin / "particles.star")
        files = FinalFiles(resolution=float(state.resolution_A), resolution_initial=float(initial_resolution))
        for h, m in state.half_maps.items():
            write_map(fin / f"half{h}.mrc", m, apix)
        if state.gmms is not None:
            for h, g in state.gmms.items():
                g.save(fin / f"gmm_half{h}.gmm.npz")
                g.save_pdb(fin / f"gmm_half{h}.pdb")
        else:
            files.gmm, files.gmm_pdb = {}, {}
        write_map(fin / "map.mrc", lowpass(0.5 * (state.half_maps[1] + state.half_maps[2]), apix, state.resolution_A),
                  apix)
        ang, sh = state.poses.change_from(start, apix)
        from ..safewrite import atomic_path

        with atomic_path(fin / "pose_changes.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, angle_deg=ang, shift_px=sh, half=table.half)
        return files

    def final_state(self):
        """(particle table with the final poses, final RefinementState) of a finished run — what a
        focused or patch refinement starts from."""
        from ..io.star import read_star

        summary = self.summary()
        if summary.final is None:
            raise InputError("the run has not finished (no final outputs in summary.json)", path=self.path)
        params = summary.params
        root = str(Path(params["particles"]).parent) if params.get("particles") else None
        table = read_star(summary.path("particles"), image_root=root)
        maps = HalfPair.build(lambda h: read_map(summary.path(f"half{h}"))[0])
        gmms = None
        if summary.final.gmm:
            gmms = HalfPair.build(lambda h: GMM.load(summary.path("gmm", h)))
        n = len(summary.iterations)
        return table, RefinementState(n, table.poses, maps, float(summary.resolution_final), gmms)


@dataclass
class Start:
    """Iteration 0 of a run: the half maps at the input poses, their report and the FSC mask."""

    state: RefinementState
    report: dict
    fsc_mask: np.ndarray
