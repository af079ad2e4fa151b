"""``gmmcore conf2pose``: each particle's conformation → a change of pose for one region, then
focused refinement of that region.

Per half set h, on its own (its network, its neutral GMM, its particles):

1. decode each particle's latent (from the heterogeneity run) into its conformation GMM;
2. find the pose θ_new minimising the RMSD between the masked projection of the *neutral* GMM at
   θ_new and the masked projection of the particle's *conformation* GMM at its initial pose θ_init
   (:class:`gmmcore.backend.ProjectionRMSDObjective`; mask = the region's mask sampled at each
   Gaussian's neutral centre), with the engine's rotation-vector Adam pose optimiser
   (:class:`gmmcore.gmm.align.BatchedPoseOptimizer`; 30 steps from θ_init by default).

   Which GMM sits at which pose matters: the particle shows the region in its own conformation at
   θ_init; the reconstruction that resolves the region uses the neutral region, so the new pose is
   where the *neutral* region projects like the particle's region does at θ_init.  For a region
   turned by Q about a point, that is θ_init·Q (the domain's own pose).  The Methods of Chen et al.
   (2024) write the RMSD with the two GMMs the other way round, which in our convention
   (projection of A·c) gives θ_init·Qᵀ — the opposite correction; the test against the
   simulator's per-particle domain poses decides, and this order passes it.

3. reconstruct both half maps at the converted poses (``iter000/``; FSC with the region's mask);
4. ``--focus-iter`` iterations of focused refinement with the same mask
   (:func:`gmmcore.refine.focused_run.refine_focused`: GMM widths outside the mask widened by
   ``--width-rule`` (default σ'² = σ²/(0.25 + 0.75·m)), after every fit; pose prior centred on the
   converted poses; FSC in the mask; band rule and GMM local resolution at the engine's defaults).

Run directory (``--out DIR``; re-running the same command continues a killed run)::

    convert/    params.json, run.log (of the conversion), convert_half{h}_chunkNNNN.npz
                (checkpoints), poses.npz and particles.star (converted poses of all particles), pose_changes.npz
                (angle_deg, shift_px, half: converted vs consensus), half1.mrc, half2.mrc (at the
                converted poses), report.json (the conversion's record)
    params.json, run.log, iter000/ … final/, summary.json
                a focused-refinement run (:func:`gmmcore.refine.focused_run.refine_focused`) from the
                converted poses with the same mask as focus and FSC mask: ``final/particles.star``,
                ``half1.mrc``, ``half2.mrc``, ``map.mrc`` like any refinement run; summary kind
                "conf2pose" with ``consensus`` (the consensus half maps' FSC in the mask),
                ``conversion`` (:class:`gmmcore.summary.Conversion`: pose changes, RMSDs, files) and
                ``conf2pose`` (the parameters); ``initial`` is the converted maps' report.

The result is one region's refinement: it can join a patch composite as one more patch.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from .. import __version__, defaults
from ..backend import PoseSettings, ProjectionRMSDObjective, get_backend
from ..errors import InputError
from ..fsc import half_map_report
from ..gmm.align import BatchedPoseOptimizer, ChunkCheckpoints
from ..grids import FourierGrid
from ..io.maps import read_map, write_map
from ..masks import values_at
from ..particles import HalfPair, Poses, check_geometry, check_split
from ..progress import progress
from ..reconstruct import reconstruct_halves
from ..refine.drive import read_user_mask
from ..refine.focused_run import FocusedParams, refine_focused
from ..refine.rundir import RunDir
from ..refine.state import RefinementState
from ..safewrite import atomic_path, write_json
from ..summary import Conversion, HalfMapReport, HeterogeneitySummary, PoseChange, RunKind, RunSummary
from .pair import HalfNetwork

log = logging.getLogger("gmmcore.refine.heter")

# What defines the conversion (convert/): the focused stage's parameters are its own run's identity
# (refine_focused), so more focused iterations, or a changed focused stage, reuse the conversion.
IDENTITY = ("source", "mask", "steps", "lr_angle", "lr_shift", "res", "seed")
# The focused stage's parameters conf2pose sets from its own options (the others keep the engine's
# defaults for a new run, and what an existing stage was made with on a continuation).
STAGE_OPTIONS = ("mask", "iterations", "source", "fsc_mask", "sym", "maxres", "minres", "batch", "chunk", "steps",
                 "prior_angle", "prior_shift", "gpu", "cpu", "seed", "width_rule", "mask_level")
SUB_BATCH = 1024  # particles decoded at once
CONVERT = "convert"


@dataclass
class Conf2PoseParams:
    """``gmmcore conf2pose`` parameters (Å, degrees, pixels)."""

    source: str  # a heterogeneity run directory
    mask: str  # the target region (MRC)
    out: str
    steps: int = 30
    lr_angle: float = 2.0  # degrees per Adam step (decaying to 10 %: reaches ≈ 33° in 30 steps)
    lr_shift: float = 0.5  # pixels per Adam step
    res: Optional[float] = None  # Å: band of the RMSD (default: the heterogeneity resolution)
    focus_iter: int = 3
    maxres: Optional[float] = None  # focused refinement: finest target resolution
    minres: float = 25.0  # focused refinement: coarsest ring in the FRC
    focus_steps: int = 10
    prior_angle: Optional[float] = 3.0  # focused refinement: pose prior centred on the converted poses
    prior_shift: Optional[float] = 1.0
    batch: Union[int, str] = 16  # or "auto": sized on the device (the pose searches are independent)
    chunk: int = 20000
    seed: int = 0
    gpu: Optional[List[int]] = None
    cpu: bool = False
    width_rule: str = defaults.WIDTH_RULE  # focused refinement: widening outside the mask (gmm.focus)
    mask_level: float = defaults.MASK_LEVEL
    version: str = field(default=__version__)

    def pose_settings(self) -> PoseSettings:
        return PoseSettings(steps=self.steps, lr_angle_deg=self.lr_angle, lr_shift_px=self.lr_shift,
                            final_lr_fraction=0.1)


def gaussian_mask(mask: np.ndarray, apix: float, centers: np.ndarray) -> np.ndarray:
    """Per-Gaussian mask weights in [0, 1]: the mask's value at each centre (trilinear)."""
    return np.clip(values_at(mask, centers, apix), 0.0, 1.0).astype(np.float32)


def convert_half(net: HalfNetwork, latents: np.ndarray, poses: Poses, weights: np.ndarray, grid: FourierGrid,
                 settings: PoseSettings, batch: Union[int, str] = 16, chunk: int = 20000,
                 checkpoints: Optional[ChunkCheckpoints] = None, rows: Optional[np.ndarray] = None,
                 backend=None, desc: str = "conf2pose"):
    """Converted poses of one half's particles: latents (k, L), initial poses (k) → (Poses (k),
    RMSD after (k,), RMSD before (k,)).  ``rows`` (table rows, for the checkpoints' identity);
    ``batch`` particles per device batch, or "auto" (the backend's ``max_batch`` for the neutral GMM
    on this grid: each particle's search is independent, so the batch changes memory, not results)."""
    k = len(latents)
    rows = np.arange(k) if rows is None else np.asarray(rows, np.int64)
    if batch == "auto":
        batch = (backend or get_backend()).max_batch(net.decoder.layout.neutral, grid, settings)
        log.info("%s: batch auto → %d particles", desc, batch)
    opt = BatchedPoseOptimizer(ProjectionRMSDObjective(net.decoder.layout.neutral, grid, weights), settings,
                               batch=batch, backend=backend)
    out = {"rotation": np.empty((k, 3, 3)), "origin": np.empty((k, 2)), "score": np.empty(k, np.float32),
           "score0": np.empty(k, np.float32)}
    bar = progress(total=k, desc=desc, unit="ptcl")
    for ci, c0 in enumerate(range(0, k, chunk)):
        sel = slice(c0, min(c0 + chunk, k))
        done = None if checkpoints is None else checkpoints.load_chunk(ci, rows[sel])
        if done is None:
            res = {key: np.empty_like(v[sel]) for key, v in out.items()}
            for b0 in range(c0, sel.stop, SUB_BATCH):
                b = slice(b0, min(b0 + SUB_BATCH, sel.stop))
                conf = _decode(net, latents[b])
                R0, o0 = poses.rotation[b], poses.origin_A[b]
                R, o, s, s0 = opt.refine(R0, o0, conf_centers=conf, ref_rotations=R0, ref_origins_A=o0)
                w = slice(b.start - c0, b.stop - c0)
                res["rotation"][w], res["origin"][w], res["score"][w], res["score0"][w] = R, o, s, s0
                bar.update(b.stop - b.start)
            if checkpoints is not None:
                checkpoints.save_chunk(ci, rows[sel], res)
        else:
            res = done
            bar.update(sel.stop - sel.start)
        for key in out:
            out[key][sel] = res[key]
    bar.close()
    return Poses(out["rotation"], out["origin"]), -out["score"], -out["score0"]


def _decode(net: HalfNetwork, z: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    return net.decoder(tf.constant(np.asarray(z, np.float32))).numpy()


@dataclass
class _Inputs:
    """What a conf2pose run reads before it writes anything."""

    hs: HeterogeneitySummary
    table: object  # ParticleTable at the consensus poses
    state0: RefinementState  # the consensus run's final state
    rows: HalfPair
    mask: np.ndarray
    latent: np.ndarray
    nets: HalfPair
    weights: HalfPair
    grid: FourierGrid


def _read_inputs(p: Conf2PoseParams) -> _Inputs:
    hs = HeterogeneitySummary.load(p.source)
    if hs.kind != RunKind.HETEROGENEITY:
        raise InputError(f"not a heterogeneity run (kind {getattr(hs.kind, 'value', hs.kind)})", path=p.source, field="--from")
    table, state0 = RunDir(hs.source).final_state()
    box, apix = check_geometry(table)
    rows = check_split(table)
    mask = read_user_mask(p.mask, box, apix)
    with np.load(hs.path(hs.latents_npz)) as z:
        latent = z["latent"]
        if len(latent) != len(table) or not np.array_equal(z["half"], table.half):
            raise InputError("the latents do not match the source run's particles", path=hs.path(hs.latents_npz))
    nets = HalfPair.build(lambda h: HalfNetwork.load(hs.path(hs.halves[str(h)].network)))
    weights = nets.map(lambda h, n: gaussian_mask(mask, apix, n.decoder.layout.centers))
    for h, w in weights.items():
        if not (w > 0).any():
            raise InputError(f"no Gaussian of half {h}'s neutral GMM lies inside the mask", path=p.mask, field="--mask")
    res = float(p.res) if p.res else float(hs.resolution_A)
    return _Inputs(hs, table, state0, rows, mask, latent, nets, weights, FourierGrid(box, apix, res, 0.0))


def run_conf2pose(p: Conf2PoseParams) -> RunSummary:
    """Run (or continue) a conformation-to-pose conversion + focused refinement; returns its summary."""
    inp = _read_inputs(p)
    backend = get_backend()
    out = Path(p.out)
    if not (out / "params.json").exists():  # a new run: refuse a foreign non-empty folder, claim this one
        RunDir.create_or_continue(out, {"kind": "conf2pose", "conf2pose": asdict(p)}, ())
    conv = RunDir.create_or_continue(out / CONVERT, asdict(p), IDENTITY)  # the conversion's identity and log
    device = backend.describe_devices(p.gpu, cpu_only=p.cpu)
    log.info("gmmcore %s conf2pose: %d particles, region %s (%d / %d Gaussians of half 1 / 2 inside), %d steps, "
             "device %s", __version__, len(inp.table), p.mask, int((inp.weights[1] > 0.5).sum()),
             int((inp.weights[2] > 0.5).sum()), p.steps, device)
    t0 = time.time()
    poses, change, converted = _convert_poses(p, inp, conv, backend)
    conv_table, maps, conv_rep = _converted_maps(p, inp, conv, poses)
    apix = check_geometry(inp.table)[1]
    consensus = half_map_report(inp.state0.half_maps[1], inp.state0.half_maps[2], apix, inp.mask)
    conversion = Conversion(pose_change=change, pose_changes=f"{CONVERT}/pose_changes.npz",
                            particles=f"{CONVERT}/particles.star", poses=f"{CONVERT}/poses.npz",
                            seconds=time.time() - t0,
                            rmsd_before={str(h): float(c[2].mean()) for h, c in converted.items()},
                            rmsd_after={str(h): float(c[1].mean()) for h, c in converted.items()},
                            resolution_region=float(conv_rep["resolution"]),
                            heterogeneity=str(Path(inp.hs.directory).resolve()), consensus_run=inp.hs.source)
    write_json(conv.path / "report.json", conversion.to_json())
    log.info("  region resolution (FSC in the mask): consensus %.2f Å, converted %.2f Å", consensus["resolution"],
             conv_rep["resolution"])

    # 3. focused refinement from the converted poses, same mask (FSC in the mask too): a plan plus a call
    fp = _focused_stage(out, FocusedParams(
        out=str(out), mask=p.mask, iterations=int(p.focus_iter), source=str(Path(inp.hs.directory).resolve()),
        fsc_mask=p.mask, sym="C1", maxres=p.maxres, minres=p.minres, batch=p.batch, chunk=p.chunk,
        steps=p.focus_steps, prior_angle=p.prior_angle, prior_shift=p.prior_shift, gpu=p.gpu, cpu=p.cpu, seed=p.seed,
        width_rule=p.width_rule, mask_level=p.mask_level))
    start = RefinementState(0, poses, maps, float(conv_rep["resolution"]))
    summary = refine_focused(conv_table, start, inp.mask, fp, fsc_mask=inp.mask, backend=backend,
                             kind=RunKind.CONF2POSE, mode={"conversion": conversion, "conf2pose": asdict(p),
                                                           "consensus": HalfMapReport.from_json(consensus)})
    log.info("region: %.2f Å (consensus) -> %.2f Å (converted) -> %.2f Å (focused, %d iterations)",
             consensus["resolution"], conv_rep["resolution"], summary.resolution_final, p.focus_iter)
    return summary


STAGE_FILES = ("summary.json", "focus_mask.mrc", "fsc_mask.mrc", "final")  # and the iterNNN folders


def _finished_iterations(out: Path) -> int:
    """Focused iterations the stage in ``out`` recorded as finished (its summary is saved after each)."""
    try:
        return len(RunSummary.load(out / "summary.json").iterations) if (out / "summary.json").is_file() else 0
    except (ValueError, KeyError, TypeError, InputError):  # unreadable: refine_focused names it
        return 0


def _focused_stage(out: Path, fp: FocusedParams) -> FocusedParams:
    """The focused stage's parameters in ``out``, given an existing stage's record (its params.json):

    * the fields conf2pose does not set (band rule, GMM start and fit, local resolution, ...) keep
      the recorded values, so a folder made by an older version continues as it was made;
    * a stage whose recorded identity differs from ``fp`` and that has finished no focused
      iteration starts anew: its files go, a killed iteration's too (they are rebuilt from convert/,
      which stays), so e.g. ``--focus-iter 0`` then ``--focus-iter 3 --width-rule sigma`` into the
      same --out works.
      A stage with finished iterations is left to refuse the change (:func:`refine_focused`)."""
    from ..refine.focused_run import IDENTITY as STAGE_IDENTITY

    pfile = out / "params.json"
    try:
        old = json.loads(pfile.read_text()) if pfile.is_file() else {}
    except ValueError:
        return fp  # refine_focused names the unreadable file
    if not any(k in old for k in STAGE_IDENTITY):  # the placeholder claimed before the focused stage: new
        return fp
    kept = {k: old[k] for k in STAGE_IDENTITY if k in old and k in fp.__dataclass_fields__ and k not in STAGE_OPTIONS}
    mine = asdict(replace(fp, **kept))
    changed = [k for k in STAGE_IDENTITY if k in old and k in mine and old[k] != mine[k]]
    if not changed or _finished_iterations(out):  # a continuation (or a change refine_focused refuses)
        return replace(fp, **kept)
    log.info("the focused stage (no iteration finished) starts anew with %s; the conversion is kept",
             ", ".join(f"{k} {mine[k]}" for k in changed))
    for f in [out / name for name in STAGE_FILES] + sorted(out.glob("iter[0-9][0-9][0-9]")):
        if f.is_dir():
            shutil.rmtree(f)
        elif f.exists():
            f.unlink()
    write_json(pfile, {"kind": "conf2pose"})
    return fp  # a new stage: today's defaults


def _convert_poses(p: Conf2PoseParams, inp: _Inputs, conv: RunDir, backend):
    """1. per half: the converted poses (checkpointed per chunk) → (poses, PoseChange, per half
    (poses, RMSD after, RMSD before)); writes convert/poses.npz and pose_changes.npz."""
    table, rows = inp.table, inp.rows
    apix = check_geometry(table)[1]
    settings = p.pose_settings()
    converted = HalfPair.build(lambda h: convert_half(
        inp.nets[h], inp.latent[rows[h]], table.poses.subset(rows[h]), inp.weights[h], inp.grid, settings,
        batch=p.batch, chunk=p.chunk, checkpoints=ChunkCheckpoints(conv.path, f"convert_half{h}"), rows=rows[h],
        backend=backend, desc=f"conf2pose half {h}"))
    poses = table.poses
    for h, (ps, rmsd, rmsd0) in converted.items():
        poses = poses.with_rows(rows[h], ps)
        log.info("  half %d: masked projection RMSD %.4g -> %.4g", h, float(rmsd0.mean()), float(rmsd.mean()))
    poses.save(conv.path / "poses.npz")
    ang, sh = poses.change_from(table.poses, apix)
    with atomic_path(conv.path / "pose_changes.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, angle_deg=ang, shift_px=sh, half=table.half)
    change = PoseChange.of(ang, sh)
    log.info("  conversion: pose change %.2f° / %.2f px (mean)", change.angle_mean, change.shift_mean)
    return poses, change, converted


def _converted_maps(p: Conf2PoseParams, inp: _Inputs, conv: RunDir, poses):
    """2. half maps at the converted poses (the start of the focused refinement) → (table at the
    converted poses, maps, their report with the region's mask); convert/particles.star, half{h}.mrc."""
    from ..io.star import write_star

    apix = check_geometry(inp.table)[1]
    conv_table = inp.table.with_poses(poses)
    write_star(conv_table, conv.path / "particles.star")
    maps_done = all((conv.path / f"half{h}.mrc").exists() for h in (1, 2)) and (conv.path / "report.json").exists()
    if maps_done:
        maps = HalfPair.build(lambda h: read_map(conv.path / f"half{h}.mrc")[0])
    else:
        maps = reconstruct_halves(conv_table, pad=2, chunk=p.chunk)
        for h, m in maps.items():
            write_map(conv.path / f"half{h}.mrc", m, apix)
    return conv_table, maps, half_map_report(maps[1], maps[2], apix, inp.mask)
