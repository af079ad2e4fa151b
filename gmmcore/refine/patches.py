"""Patch-by-patch refinement: K focused refinements on K-means patches of the GMM, then composite
half maps.

1. Patches: K-means (scikit-learn, k-means++, ``n_init`` 10, ``random_state`` = seed) of the
   centres of the start's two GMMs together (half 1's and half 2's Gaussians; the masks are shared
   by both halves, like the FSC mask).  Patch masks (``patch_shape``):

   * "tight" — the particle's density (the start's half maps averaged, low-passed to 15 Å and
     thresholded as for the automatic FSC mask, not dilated) shared out by nearest Gaussian
     centre: patch i holds the voxels nearest one of its Gaussians, dilated by 2 px, then a
     ``falloff_px`` (default 5) raised-cosine edge.  The patches tile the particle and each
     isolates its own part (the reference code's ``--masktight``: "seems safe").
   * "sphere" — centred on the cluster centre with radius = the distance of its farthest member,
     plus the fall-off (the reference code's default).  On a compact particle each sphere holds
     most of the mass (three spheres on the realistic assembly: 77 % each).

   Adjacent masks overlap by about the fall-off.  Patches are numbered 1..K in the order of their
   centres' x, then y, then z; definition and masks are written once (``patches.json``,
   ``masks/patch_NN.mrc``) and read back by every later call or worker.
2. Patch i = :func:`gmmcore.refine.focused_run.refine_focused` with mask i, ``iterations`` focused
   iterations from the start (the source run's final state), in its own run directory
   ``DIR/patch_NN`` (kind "patch"): resumable on its own; a finished patch is never touched
   again.  ``only`` runs some patches (e.g. one per worker or GPU); the composite is made by the
   call that finds every patch finished.
3. Composite half maps (:func:`gmmcore.composite.composite`): per half h,
   (Σ M_i·Map_i,h + max(0, 1 − Σ M_i)·Global_h) / max(Σ M_i, 1) — Map_i,h the unfiltered final
   half map of patch i, Global_h the start's half map filling where the masks sum to less than 1.
   With ``reimpose`` (expanded particles refined in C1), every (mask, map) pair is also taken at
   every operator of that group (symmetric composite).  Then the gold-standard FSC of the two
   composite halves (FSC mask of the source run).

Run directory:

    params.json, run.log, fsc_mask.mrc, masks/patch_NN.mrc,
    patches.json   PatchDefinition: the patches (centre, radius, size), the start GMMs, each Gaussian's patch
    patch_NN/      a focused run (final/particles.star: that patch's poses)
    final/         half1.mrc, half2.mrc (composite), map.mrc, weights.mrc (Σ M_i)
    summary.json   RunSummary kind "patches" (patches: PatchRecord list; composite_report)
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .. import __version__, defaults
from ..composite import composite, symmetry_pairs
from ..errors import InputError
from ..fourier import lowpass
from ..fsc import half_map_report
from ..io.maps import read_map, write_map
from ..masks import auto_mask, partition_masks, soft_sphere_mask
from ..particles import HalfPair, check_geometry
from ..summary import FinalFiles, HalfMapReport, PatchDefinition, PatchRecord, ReimposedMaps, RunKind, RunSummary
from ..symmetry import symmetry_name
from ..parallel import Unit, local_executor
from .drive import finished, new_summary, read_user_mask, state_fingerprint
from .focused_run import FocusedAlignment, FocusedParams, refine_focused
from .rundir import RunDir, setup_logging
from .start import FSC_MASK, start_from_run

log = logging.getLogger("gmmcore.refine")

IDENTITY = ("source", "start_fingerprint", "patches", "patch_shape", "falloff_px", "patch_seed", "reimpose",
            "fsc_mask")
TIGHT_DILATE_PX = 2.0  # a tight patch's region grows this much before its soft edge


@dataclass
class PatchParams(FocusedAlignment):
    """``gmmcore refine-patches`` parameters (the alignment ones as for focused refinement)."""

    source: str
    out: str
    patches: int = 8
    iterations: int = 3
    patch_shape: str = defaults.PATCH_SHAPE
    falloff_px: float = 5.0
    patch_seed: int = 0
    only: Optional[List[int]] = None  # run just these patches (1-based); the composite waits for all
    reimpose: Optional[str] = None
    fsc_mask: Optional[str] = None
    version: str = field(default=__version__)

    def focused(self, out: Path) -> FocusedParams:
        """The focused-run parameters of one patch."""
        keep = {f.name: getattr(self, f.name) for f in fields(FocusedAlignment)}
        return FocusedParams(out=str(out), source=self.source, iterations=self.iterations, **keep)


# ---------------------------------------------------------------------------------------------
# patches


def define_patches(gmms: HalfPair, k: int, box: int, apix: float, falloff_px: float = 5.0, seed: int = 0
                   ) -> Tuple[List[dict], dict]:
    """K patches of the two GMMs' centres: ([{"center_A" (x, y, z Å), "radius_A", "n_gaussians"}],
    {"1": patch number (1..K) of each Gaussian of half 1's GMM, "2": of half 2's}), numbered by
    their centres' (x, y, z) order (see the module notes)."""
    from sklearn.cluster import KMeans

    sizes = [len(g) for _, g in gmms.items()]
    pts = np.concatenate([np.asarray(g.centers, np.float64) for _, g in gmms.items()])
    if not 1 <= k <= len(pts):
        raise InputError(f"{k} patches for {len(pts)} Gaussians: need 1 ≤ patches ≤ Gaussians", field="--patches")
    labels = KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=seed).fit_predict(pts)
    out = []
    for lab in range(k):
        mem = pts[labels == lab]
        c = mem.mean(0)
        out.append({"label": lab, "center_A": [float(v) for v in c],
                    "radius_A": float(np.linalg.norm(mem - c, axis=1).max()), "n_gaussians": int(len(mem))})
    out.sort(key=lambda p: tuple(round(v, 3) for v in p["center_A"]))
    number = np.empty(k, np.int64)
    for i, p in enumerate(out, 1):
        number[p.pop("label")] = i
    numbered = number[labels]
    return out, {"1": numbered[:sizes[0]].tolist(), "2": numbered[sizes[0]:].tolist()}


def patch_mask(patch: dict, box: int, apix: float, falloff_px: float) -> np.ndarray:
    """The soft spherical mask of a patch (1 within its radius, raised cosine over ``falloff_px``)."""
    center_px = np.asarray(patch["center_A"], np.float64)[::-1] / apix + box // 2
    return soft_sphere_mask(box, patch["radius_A"] / apix, falloff_px, center=center_px)


def tight_patch_masks(gmms: HalfPair, labels: dict, k: int, density: np.ndarray, apix: float,
                      falloff_px: float) -> List[np.ndarray]:
    """The "tight" masks of ``k`` patches (module notes): ``density`` (the start's map) thresholded
    as for the automatic FSC mask, shared out by nearest Gaussian centre (``labels``: the patch
    number 1..k of each Gaussian of half "1" and "2", as :func:`define_patches` returns them)."""
    support = auto_mask(density, apix, dilate_px=0.0, edge_px=0.0) > 0.5
    pts = np.concatenate([np.asarray(g.centers, np.float64) for _, g in gmms.items()])
    lab = np.concatenate([np.asarray(labels[str(h)], np.int64) for h, _ in gmms.items()]) - 1
    masks = partition_masks(support, pts, lab, k, apix, dilate_px=TIGHT_DILATE_PX, edge_px=falloff_px)
    empty = [i + 1 for i, m in enumerate(masks) if not m.any()]
    if empty:
        raise InputError(f"patch {empty[0]} holds none of the particle's density: use fewer patches or the "
                         "sphere shape", field="--patches")
    return masks


def _patch_dir(i: int) -> str:
    return f"patch_{i:02d}"


def _define(p: PatchParams, start, box: int, apix: float) -> Tuple[List[dict], dict, List[np.ndarray]]:
    """(patches, labels, masks) of a new run (each patch with its share of the start map's mass)."""
    if p.patch_shape not in defaults.PATCH_SHAPES:
        raise InputError(f"unknown patch shape {p.patch_shape!r} (one of {', '.join(defaults.PATCH_SHAPES)})",
                         field="--patch-shape")
    patches, labels = define_patches(start.gmms, p.patches, box, apix, p.falloff_px, p.patch_seed)
    density = 0.5 * (start.half_maps[1] + start.half_maps[2])
    if p.patch_shape == "tight":
        masks = tight_patch_masks(start.gmms, labels, len(patches), density, apix, p.falloff_px)
    else:
        masks = [patch_mask(patch, box, apix, p.falloff_px) for patch in patches]
    positive = np.clip(lowpass(density, apix, 15.0), 0.0, None)  # the mask shares below: noise-free enough
    total = float(positive.sum()) or 1.0
    for i, (patch, mask) in enumerate(zip(patches, masks), 1):
        patch.update(index=i, dir=_patch_dir(i), mask=f"masks/{_patch_dir(i)}.mrc",
                     mask_mass=round(float((mask * positive).sum()) / total, 4))
    return patches, labels, masks


def _load_or_write(run: RunDir, p: PatchParams, start, box: int, apix: float, new) -> List[dict]:
    """The run's patches: its patches.json, or ``new`` (from :func:`_define` before the run was
    created; made again here if the run turned out to be an older one that keeps another shape)."""
    if (run.path / PatchDefinition.NAME).is_file():
        return PatchDefinition.load(run.path).patches
    patches, labels, masks = _define(p, start, box, apix) if new is None or "patch_shape" in run.inherited else new
    (run.path / "masks").mkdir(exist_ok=True)
    for patch, mask in zip(patches, masks):
        write_map(run.path / patch["mask"], mask, apix)
    PatchDefinition(k=p.patches, seed=p.patch_seed, falloff_px=p.falloff_px, shape=p.patch_shape,
                    source="K-means of both half GMMs' centres", patches=patches,
                    gmm={str(h): RunSummary.load(p.source).path("gmm", h) for h in (1, 2)},
                    labels=labels).save(run.path)
    return patches


# ---------------------------------------------------------------------------------------------
# the run


def refine_patch(table, start, mask, params: FocusedParams, fsc_mask, fit_mask, mode: dict) -> RunSummary:
    """One patch: a focused run of kind "patch" in ``params.out`` (a work unit: runs in this
    process or on a worker, whose chosen device it keeps)."""
    from ..parallel.worker import chosen_device

    return refine_focused(table, start, mask, params, fsc_mask=fsc_mask, fit_mask=fit_mask, kind=RunKind.PATCH,
                          mode=mode, device=chosen_device() if params.gpu is None else None)


def run_patches(p: PatchParams, executor=None) -> RunSummary:
    """Run (or continue) a patch-by-patch refinement (see the module notes); returns its summary.

    ``executor`` (:mod:`gmmcore.parallel`): where the patches run — one unit per patch (default:
    in this process, one after the other); the composite is made here when all are finished."""
    table, start, fsc_mask, fit_mask, src = start_from_run(p.source)
    box, apix = check_geometry(table)
    if start.gmms is None:
        raise InputError("the source run has no final GMMs to cut into patches", path=p.source, field="--from")
    p = replace(p, sym=symmetry_name(p.sym or src.get("sym") or "C1"),
                reimpose=p.reimpose and symmetry_name(p.reimpose, "--reimpose"))
    if p.fsc_mask:
        fsc_mask = read_user_mask(p.fsc_mask, box, apix, "FSC mask", "--fsc-mask")
    record = asdict(p)
    record["start_fingerprint"] = state_fingerprint(start)
    # a new run's patches and masks first: a patch count its particle cannot hold is refused before
    # anything is written (so the corrected command can use the same --out)
    new = None if (Path(p.out) / PatchDefinition.NAME).is_file() else _define(p, start, box, apix)
    # each patch_NN is a run of its own (maybe written by another worker now): it cleans itself
    run = RunDir.create_or_continue(p.out, record, IDENTITY, nested_runs=("patch_*",))
    p = replace(p, **run.inherited)  # an older run keeps what it was made with
    if not (run.path / FSC_MASK).is_file():
        write_map(run.path / FSC_MASK, fsc_mask, apix)
    patches = _load_or_write(run, p, start, box, apix, new)
    wanted = sorted(set(p.only or range(1, len(patches) + 1)))
    bad = [i for i in wanted if not 1 <= i <= len(patches)]
    if bad:
        raise InputError(f"no patch {bad[0]} (patches are 1..{len(patches)})", field="--patch")
    log.info("gmmcore %s patch-by-patch refinement: %d %s patches (%s), %d iterations each, from %s", __version__,
             len(patches), p.patch_shape,
             ", ".join(f"{q['n_gaussians']} Gaussians" + (f", {100 * q['mask_mass']:.0f} % of the mass"
                                                         if "mask_mass" in q else "") for q in patches),
             p.iterations, p.source)

    initial = HalfMapReport.from_json(half_map_report(start.half_maps[1], start.half_maps[2], apix, fsc_mask))
    summary = new_summary(RunKind.PATCHES, record, table, initial, run)
    todo = [i for i in wanted if finished(run.path / patches[i - 1]["dir"], p.iterations) is None]
    for i in sorted(set(wanted) - set(todo)):
        log.info("patch %d already complete", i)
    device = _run_units(run, p, patches, todo, table, start, fsc_mask, fit_mask, executor or local_executor())
    if device is not None:
        summary.device = device
    return _collect(run, p, patches, summary, start, fsc_mask, apix)


def _run_units(run: RunDir, p: PatchParams, patches: List[dict], todo: List[int], table, start, fsc_mask, fit_mask,
               executor) -> Optional[str]:
    """Run the patches ``todo`` (one unit each); → the device of the last one (None: none ran)."""
    units = []
    for i in todo:
        patch = patches[i - 1]
        log.info("patch %d of %d: centre (%.1f, %.1f, %.1f) Å, radius %.1f Å", i, len(patches), *patch["center_A"],
                 patch["radius_A"])
        mask, _ = read_map(run.path / patch["mask"])
        fp = p.focused(run.path / patch["dir"])
        if not executor.in_process:  # a worker runs on the device it was given (its GPU, or the CPU)
            fp = replace(fp, gpu=None)
        units.append(Unit(f"patch {i}", refine_patch, (table, start, mask, fp, fsc_mask, fit_mask,
                                                        {"patch": i, "parent": str(run.path)})))

    def done_one(k, s, info):
        setup_logging(run.path)  # a patch run in this process logged into its own run.log
        where = f" ({info.worker}, {info.device})" if info.device else ""
        log.info("patch %d: %.2f -> %.2f Å within its mask%s", todo[k], s.final.resolution_focus_initial,
                 s.final.resolution_focus, where)

    if not units:
        return None
    if not executor.in_process:
        log.info("%d patch(es) on %s", len(units), executor.describe())
    return executor.run(units, on_done=done_one)[-1].device


def _collect(run: RunDir, p: PatchParams, patches: List[dict], summary: RunSummary, start, fsc_mask,
             apix: float) -> RunSummary:
    """The patch records (results of the finished ones); the composite when every patch is finished."""
    records, done = [], []
    for patch in patches:
        s = finished(run.path / patch["dir"], p.iterations)
        rec = PatchRecord(index=patch["index"], dir=patch["dir"], mask=patch["mask"], center_A=patch["center_A"],
                          radius_A=patch["radius_A"], n_gaussians=patch["n_gaussians"], complete=s is not None)
        if s is not None:
            rec.resolution = s.resolution_final
            rec.resolution_focus = s.final.resolution_focus
            rec.resolution_focus_initial = s.final.resolution_focus_initial
            rec.particles = f"{patch['dir']}/{s.final.particles}"
            rec.summary = f"{patch['dir']}/summary.json"
            done.append((patch, s))
            for w in s.warnings:  # a patch's own warnings (e.g. its region too weak to align alone)
                note = f"patch {patch['index']}: {w}"
                if note not in summary.warnings:
                    summary.warnings.append(note)
        records.append(rec)
    summary.patches = records
    if len(done) < len(patches):
        summary.save()
        log.info("%d of %d patches finished; the composite is made when all are", len(done), len(patches))
        return summary
    summary.final, summary.composite_report = _composite(run, done, start, fsc_mask, apix, p.reimpose)
    summary.save()
    log.info("done: %.2f Å (start) -> %.2f Å (composite, FSC mask); results in %s", summary.initial.resolution,
             summary.composite_report.resolution, run.path / "final")
    return summary


def _composite(run: RunDir, done, start, fsc_mask, apix: float, reimpose: Optional[str]):
    """Write final/ (composite halves, map, weights) and return (FinalFiles, the composite's report)."""
    fin = run.path / "final"
    fin.mkdir(exist_ok=True)
    masks = [read_map(run.path / patch["mask"])[0] for patch, _ in done]

    def half(h: int) -> np.ndarray:
        pairs = [(m, read_map(s.path(f"half{h}"))[0]) for m, (_, s) in zip(masks, done)]
        if reimpose:
            pairs = symmetry_pairs(pairs, reimpose)
        comp, W = composite(pairs, start.half_maps[h])
        if h == 1:
            write_map(fin / "weights.mrc", W, apix)
        return comp

    maps = HalfPair.build(half)
    rep = half_map_report(maps[1], maps[2], apix, fsc_mask)
    for h, m in maps.items():
        write_map(fin / f"half{h}.mrc", m, apix)
    write_map(fin / "map.mrc", lowpass(0.5 * (maps[1] + maps[2]), apix, rep["resolution"]), apix)
    files = FinalFiles(particles=None, gmm={}, gmm_pdb={}, pose_changes=None, resolution=float(rep["resolution"]),
                       resolution_initial=None, weights="final/weights.mrc", fsc_mask=FSC_MASK,
                       reimposed=ReimposedMaps(sym=reimpose) if reimpose else None,
                       fill_rule="(sum_i M_i*Map_i + max(0, 1 - sum_i M_i)*Global) / max(sum_i M_i, 1)")
    return files, HalfMapReport.from_json(rep)
