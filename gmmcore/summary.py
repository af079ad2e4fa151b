"""The run contract: what the engine's ``summary.json`` files hold (stdlib + json only).

The engine writes every summary through these classes; the Scipion plugin, the viewers and the
tests' fakes read (and forge) them through the same classes, so the two sides cannot drift.
Paths inside a summary are relative to its folder; :meth:`RunSummary.path` makes them absolute.

Files (all JSON, written atomically):

* ``gmmcore import --out DIR`` → ``DIR/summary.json``: :class:`ImportSummary`.
* ``gmmcore reconstruct --out DIR`` → ``DIR/summary.json``: :class:`ReconstructSummary`
  (:class:`HalfMapReport` fields plus ``n_particles``, ``apix``, ``box``, ``sym``, ``pad``, ...);
  ``gmmcore expand-symmetry``: :class:`ExpansionSummary`; ``gmmcore local-resolution``:
  :class:`LocalResolutionSummary`.
* ``gmmcore refine --out DIR`` → ``DIR/summary.json``: :class:`RunSummary` (``kind``
  :class:`RunKind` "global"; focused and patch runs use the same schema), with one
  :class:`IterationRecord` per iteration (also ``DIR/iterNNN/report.json``) and :class:`FinalFiles`.
* ``gmmcore heterogeneity --out DIR`` → ``DIR/summary.json``: :class:`HeterogeneitySummary` (one
  :class:`LatentHalfReport` per half set); ``gmmcore conf2pose --out DIR`` → a :class:`RunSummary`
  of kind "conf2pose" (``consensus``: a :class:`HalfMapReport`; ``conversion``: a
  :class:`Conversion`; ``conf2pose``: its parameters).
* ``gmmcore refine-focused --out DIR``: the same, ``kind`` "focused"; every report also holds
  ``resolution_focus`` / ``fsc_focus`` (FSC within the focus mask); ``final`` also names
  ``focus_mask``, ``fsc_mask``, holds ``resolution_focus`` / ``resolution_focus_initial`` and,
  with ``--reimpose``, ``reimposed`` (:class:`ReimposedMaps`); ``start``: a :class:`StartRecord`.
* ``gmmcore refine-patches --out DIR``: ``kind`` "patches"; ``initial`` = the start (global) maps,
  no iterations of its own, ``patches`` = one :class:`PatchRecord` each (each patch is a focused
  run, kind "patch" with ``patch`` / ``parent``, in ``DIR/patch_NN``), ``composite`` = the
  :class:`HalfMapReport` of the composite half maps (``final.half1/half2/map``, ``final.weights``;
  ``final.particles`` is None: every patch has its own particles); ``DIR/patches.json``: the
  :class:`PatchDefinition` (``RunSummary.patch_definition()``).

Typed fields that a mode does not use are None and not written; ``extra`` holds only keys no class
names (free-form additions), so older files load with nothing lost.

Units: resolutions in Å, frequencies in 1/Å, pose changes in degrees and pixels, times in s.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Dict, List, Optional, Tuple, Union

SUMMARY_NAME = "summary.json"
SCHEMA_VERSION = 2  # 1: summaries before the schema module (same keys, no "kind"/"schema")


def _known(cls, data: dict) -> Tuple[dict, dict]:
    """Split ``data`` into the dataclass' fields and the rest (kept, so nothing is lost)."""
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


def _without_none(d: dict, optional) -> dict:
    """``d`` less the keys in ``optional`` whose value is None (a mode's unused typed fields)."""
    return {k: v for k, v in d.items() if not (k in optional and v is None)}


class RunKind(str, Enum):
    """What wrote a run summary (str-valued: ``kind == "focused"`` holds, JSON writes the string)."""

    GLOBAL = "global"
    FOCUSED = "focused"
    PATCH = "patch"  # one patch of a patch-by-patch run
    PATCHES = "patches"
    CONF2POSE = "conf2pose"
    HETEROGENEITY = "heterogeneity"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, value) -> Union["RunKind", str]:
        """The kind named ``value``; a name this version does not know stays a plain string."""
        try:
            return cls(value)
        except ValueError:
            return value


def _write(path: str, data: dict) -> None:
    from .safewrite import write_json

    write_json(path, data)


def _read(path_or_dir: str) -> Tuple[dict, str]:
    path = str(path_or_dir)
    if os.path.isdir(path):
        path = os.path.join(path, SUMMARY_NAME)
    with open(path) as fh:
        return json.load(fh), os.path.dirname(os.path.abspath(path))


# ---------------------------------------------------------------------------------------------
# import


@dataclass
class ImportSummary:
    """``gmmcore import``: what was read and written.  ``split`` is "input" (the file's half sets)
    or "new-random" (assigned by ``--new-split``)."""

    n_particles: int
    per_half: Dict[str, int]
    per_optics_group: Dict[str, int]
    phase_flipped: bool
    source: str
    format: Optional[str]
    split: str
    star: str
    stack: Optional[str]
    apix: List[float]
    box: List[int]
    warnings: List[str] = field(default_factory=list)
    split_note: Optional[str] = None  # why a new split was made (``--new-split``), e.g. "no particles in half set 2: ..."
    stacks_missing: int = 0  # stacks not found by a ``--metadata-only`` import (names kept as given)
    extra: dict = field(default_factory=dict)

    @property
    def new_split(self) -> bool:
        return self.split == "new-random"

    def to_json(self) -> dict:
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **self.extra}

    def save(self, folder) -> None:
        _write(os.path.join(str(folder), SUMMARY_NAME), self.to_json())

    @classmethod
    def from_json(cls, data: dict) -> "ImportSummary":
        known, extra = _known(cls, data)
        known.setdefault("split", "new-random" if data.get("new_split") else "input")
        for key, default in (("per_optics_group", {}), ("format", None), ("star", "particles.star"),
                             ("stack", None), ("apix", []), ("box", []), ("source", ""), ("per_half", {}),
                             ("phase_flipped", True), ("n_particles", 0)):
            known.setdefault(key, default)
        return cls(**known, extra=extra)

    @classmethod
    def load(cls, path_or_dir) -> "ImportSummary":
        return cls.from_json(_read(path_or_dir)[0])


# ---------------------------------------------------------------------------------------------
# half maps and iterations


@dataclass
class HalfMapReport:
    """Gold-standard FSC of two half maps: resolution = the masked one (FSC 0.143).  Focused
    runs add the focus report: ``resolution_focus`` (Å) and ``fsc_focus`` (the FSC within the
    focus mask, at the frequencies ``fsc["freq"]``); ``seconds``: time to make the maps."""

    resolution: float
    resolution_unmasked: float
    resolution_masked: float
    fsc: Dict[str, List[float]]  # {"freq": 1/Å, "unmasked", "masked"}
    resolution_focus: Optional[float] = None
    fsc_focus: Optional[List[float]] = None
    seconds: Optional[float] = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {"resolution": self.resolution, "resolution_unmasked": self.resolution_unmasked,
             "resolution_masked": self.resolution_masked, "fsc": self.fsc, "seconds": self.seconds,
             "resolution_focus": self.resolution_focus, "fsc_focus": self.fsc_focus}
        return {**_without_none(d, ("seconds", "resolution_focus", "fsc_focus")), **self.extra}

    def focus_curve(self) -> Optional[Tuple[List[float], List[float], float]]:
        """(freq 1/Å, FSC within the focus mask, its resolution Å), or None without a focus."""
        if not self.fsc_focus:
            return None
        return self.fsc["freq"], self.fsc_focus, float(self.resolution_focus)

    @classmethod
    def from_json(cls, data: dict) -> "HalfMapReport":
        known, extra = _known(cls, data)
        return cls(**known, extra=extra)

    def curve(self, masked: bool) -> Tuple[List[float], List[float], float]:
        """(freq 1/Å, FSC, resolution Å) of the masked or unmasked FSC."""
        kind = "masked" if masked else "unmasked"
        return self.fsc["freq"], self.fsc[kind], float(self.resolution_masked if masked else self.resolution_unmasked)


@dataclass
class PoseChange:
    """Per-iteration change of the poses: angle (degrees) and shift (pixels), mean and median."""

    angle_mean: float
    angle_median: float
    shift_mean: float
    shift_median: float

    @classmethod
    def of(cls, angle_deg, shift_px) -> "PoseChange":
        a, s = sorted(float(x) for x in angle_deg), sorted(float(x) for x in shift_px)
        return cls(_mean(a), _median(a), _mean(s), _median(s))


def _mean(v: List[float]) -> float:
    return sum(v) / len(v) if v else float("nan")


def _median(v: List[float]) -> float:
    if not v:
        return float("nan")
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


@dataclass
class IterationRecord:
    """One refinement iteration (``iterNNN/report.json``, written last: marks it complete)."""

    iteration: int
    target_resolution: float
    report: HalfMapReport
    pose_change: PoseChange
    frc: Dict[str, Dict[str, float]]  # {"before": {"1", "2"}, "after": {...}} mean weighted FRC per half
    gmm_fsc: Dict[str, float]  # mean map-vs-GMM FSC per half
    n_gaussians: Dict[str, int]
    seconds: float
    dir: str
    extra: dict = field(default_factory=dict)
    # each half's GMM against the other half map, and what a GMM equal to the truth would score
    # (gmmcore.gmm.fidelity; absent from records of older versions, and then not written)
    gmm_cross_fsc: Dict[str, float] = field(default_factory=dict)
    gmm_fsc_ceiling: float = float("nan")

    @property
    def resolution(self) -> float:
        return float(self.report.resolution)

    def to_json(self) -> dict:
        return {"iteration": self.iteration, "target_resolution": self.target_resolution, **self.report.to_json(),
                "pose_change": asdict(self.pose_change), "frc": self.frc, "gmm_fsc": self.gmm_fsc,
                "n_gaussians": self.n_gaussians, "seconds": self.seconds, "dir": self.dir,
                **({"gmm_cross_fsc": self.gmm_cross_fsc, "gmm_fsc_ceiling": self.gmm_fsc_ceiling}
                   if self.gmm_cross_fsc else {}), **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> "IterationRecord":
        # The record is flat on disk: the keys that are not the record's own are its report's
        # (typed, e.g. the FSC within a focus mask, or free-form extras).
        known, extra = _known(cls, data)
        rep = HalfMapReport.from_json({k: extra.pop(k) for k in list(extra)})
        pc = known.pop("pose_change", None) or {}
        return cls(report=rep, pose_change=PoseChange(**{k: pc.get(k, float("nan")) for k in
                                                          ("angle_mean", "angle_median", "shift_mean", "shift_median")}),
                   **{k: known.get(k, d) for k, d in (("iteration", 0), ("target_resolution", float("nan")),
                                                      ("frc", {}), ("gmm_fsc", {}), ("n_gaussians", {}),
                                                      ("seconds", 0.0), ("dir", ""), ("gmm_cross_fsc", {}),
                                                      ("gmm_fsc_ceiling", float("nan")))},
                   extra={})

    def save(self, path) -> None:
        _write(str(path), self.to_json())

    @classmethod
    def load(cls, path) -> "IterationRecord":
        with open(path) as fh:
            return cls.from_json(json.load(fh))


@dataclass
class ReimposedMaps:
    """A focused run's ``--reimpose``: point group ``sym`` and the symmetric composite half maps
    and map (paths relative to the run folder) with their FSC resolutions (Å).  In a patch run's
    final files only ``sym`` is set (the composite itself is the symmetric one): written as the
    bare group name."""

    sym: str
    half1: Optional[str] = None
    half2: Optional[str] = None
    map: Optional[str] = None
    resolution: Optional[float] = None
    resolution_unmasked: Optional[float] = None

    def to_json(self):
        return self.sym if self.half1 is None else asdict(self)

    @classmethod
    def from_json(cls, data) -> Optional["ReimposedMaps"]:
        if not data:
            return None
        return cls(sym=data) if isinstance(data, str) else cls(**{k: data.get(k) for k in
                                                                  (f.name for f in fields(cls))})


_FINAL_OPTIONAL = ("focus_mask", "fsc_mask", "resolution_focus", "resolution_focus_initial", "reimposed", "weights",
                   "fill_rule")


@dataclass
class FinalFiles:
    """The files a finished run leaves in ``DIR/final`` (paths relative to DIR).  Focused runs
    add ``focus_mask``, ``fsc_mask`` (MRC), ``resolution_focus`` / ``resolution_focus_initial``
    (Å, within the focus mask) and ``reimposed``; a patch run's composite adds ``weights``
    (Σ M_i, MRC), ``fsc_mask`` and ``fill_rule``."""

    particles: str = "final/particles.star"
    half1: str = "final/half1.mrc"
    half2: str = "final/half2.mrc"
    map: str = "final/map.mrc"
    gmm: Dict[str, str] = field(default_factory=lambda: {"1": "final/gmm_half1.gmm.npz", "2": "final/gmm_half2.gmm.npz"})
    gmm_pdb: Dict[str, str] = field(default_factory=lambda: {"1": "final/gmm_half1.pdb", "2": "final/gmm_half2.pdb"})
    pose_changes: str = "final/pose_changes.npz"
    resolution: Optional[float] = None
    resolution_initial: Optional[float] = None
    focus_mask: Optional[str] = None
    fsc_mask: Optional[str] = None
    resolution_focus: Optional[float] = None
    resolution_focus_initial: Optional[float] = None
    reimposed: Optional[ReimposedMaps] = None
    weights: Optional[str] = None
    fill_rule: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["reimposed"] = None if self.reimposed is None else self.reimposed.to_json()
        return {**_without_none(d, _FINAL_OPTIONAL), **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> "FinalFiles":
        known, extra = _known(cls, data)
        known["reimposed"] = ReimposedMaps.from_json(known.get("reimposed"))
        return cls(**known, extra=extra)


# ---------------------------------------------------------------------------------------------
# patches (``kind`` "patches": one record per patch in RunSummary.patches)


@dataclass
class PatchRecord:
    """One patch of a patch-by-patch run: its own focused run in ``dir`` (relative to the patch
    run's folder), its soft ``mask`` (MRC; tight or a sphere, :class:`PatchDefinition`), its cluster
    (``center_A`` x/y/z Å from the box centre; ``radius_A``: its farthest Gaussian, the sphere's
    radius without the fall-off), the number of GMM centres it holds, and — once the
    patch has finished — its results: ``resolution`` (FSC mask), ``resolution_focus`` (within its
    mask; ``resolution_focus_initial`` at the start) and its refined ``particles`` (star)."""

    index: int
    dir: str
    mask: str
    center_A: List[float]
    radius_A: float
    n_gaussians: int
    complete: bool = False
    resolution: Optional[float] = None
    resolution_focus: Optional[float] = None
    resolution_focus_initial: Optional[float] = None
    particles: Optional[str] = None
    summary: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> "PatchRecord":
        known, extra = _known(cls, data)
        return cls(**known, extra=extra)


@dataclass
class PatchDefinition:
    """``DIR/patches.json`` of a patch-by-patch run: ``k`` patches from K-means (``seed``) of the
    start GMMs' centres, each {"center_A", "radius_A", "n_gaussians", "index", "dir", "mask"};
    ``gmm`` {"1", "2"}: the start GMM files; ``labels`` {"1", "2"}: the patch number (1..k) of
    each Gaussian of that half's GMM; ``falloff_px``: the masks' raised-cosine edge (pixels);
    ``shape``: "tight" (the density shared out by nearest Gaussian) or "sphere" (a run made before
    tight masks existed records none: sphere); a patch's ``mask_mass``: the share of the start map's
    positive density inside its mask."""

    k: int
    seed: int
    falloff_px: float
    patches: List[dict]
    gmm: Dict[str, str]
    labels: Dict[str, List[int]]
    source: str = ""
    shape: str = "sphere"
    extra: dict = field(default_factory=dict)

    NAME = "patches.json"

    def to_json(self) -> dict:
        return {"k": self.k, "seed": self.seed, "falloff_px": self.falloff_px, "source": self.source, "shape": self.shape,
                "patches": self.patches, "gmm": self.gmm, "labels": self.labels, **self.extra}

    def save(self, folder) -> None:
        _write(os.path.join(str(folder), self.NAME), self.to_json())

    @classmethod
    def load(cls, folder) -> "PatchDefinition":
        with open(os.path.join(str(folder), cls.NAME)) as fh:
            known, extra = _known(cls, json.load(fh))
        return cls(**known, extra=extra)


# ---------------------------------------------------------------------------------------------
# what a focused run started from, and conformation-to-pose's conversion step


@dataclass(frozen=True)
class PosePrecision:
    """The bound on a per-particle pose estimate of a region (median over the sampled particles).

    ``angle_deg``: expected mean angular error of an unbiased estimate (degrees); ``shift_px``:
    expected mean shift error (pixels); ``axis_deg``: standard deviations about the three axes
    of the image frame (x, y in the image plane, z the beam), degrees; ``resolution_A``: the band's
    finest resolution; ``region_gaussians`` / ``region_mass``: the part of the GMM that is the
    region (all of it for the whole particle); ``n_particles``: particles sampled."""

    angle_deg: float
    shift_px: float
    axis_deg: tuple
    resolution_A: float
    region_gaussians: int
    region_mass: float
    n_particles: int

    def to_json(self) -> dict:
        return {"angle_deg": self.angle_deg, "shift_px": self.shift_px, "axis_deg": list(self.axis_deg),
                "resolution_A": self.resolution_A, "region_gaussians": self.region_gaussians,
                "region_mass": self.region_mass, "n_particles": self.n_particles}

    @classmethod
    def from_json(cls, d: dict) -> "PosePrecision":
        return cls(**{**d, "axis_deg": tuple(d.get("axis_deg", ()))})


@dataclass
class StartRecord:
    """A ``refine-focused`` run's start: ``source`` (run folder or particles) and its resolution (Å)."""

    source: Optional[str]
    resolution: float


@dataclass
class Conversion:
    """``gmmcore conf2pose``'s conversion step (also ``DIR/convert/report.json``): the mean
    ``pose_change`` of the converted poses from the consensus ones, the files it wrote (relative to
    the run folder), the mean masked projection RMSD per half before and after, the converted
    maps' FSC resolution in the region's mask (Å), the heterogeneity run and its consensus run."""

    pose_change: PoseChange
    pose_changes: str = "convert/pose_changes.npz"
    particles: str = "convert/particles.star"
    poses: str = "convert/poses.npz"
    seconds: float = 0.0
    rmsd_before: Dict[str, float] = field(default_factory=dict)
    rmsd_after: Dict[str, float] = field(default_factory=dict)
    resolution_region: Optional[float] = None
    heterogeneity: str = ""
    consensus_run: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["pose_change"] = asdict(self.pose_change)
        return {**d, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> "Conversion":
        known, extra = _known(cls, data)
        pc = known.get("pose_change") or {}
        known["pose_change"] = PoseChange(**{f.name: pc.get(f.name, float("nan")) for f in fields(PoseChange)})
        return cls(**known, extra=extra)


# ---------------------------------------------------------------------------------------------
# a refinement run

# typed fields of RunSummary written only when set: on disk name → attribute
_RUN_OPTIONAL = {"split": "split", "split_note": "split_note", "warnings": "warnings", "start": "start",
                 "patch": "patch", "parent": "parent", "composite": "composite_report",
                 "consensus": "consensus", "conversion": "conversion", "conf2pose": "conf2pose",
                 "pose_precision": "pose_precision"}


@dataclass
class RunSummary:
    """``DIR/summary.json`` of a refinement run (global, focused, patch, patches, conf2pose).

    Mode fields (None where a mode has none): ``split`` "input" / "new-random" and
    ``split_note`` (global); ``warnings``; ``start`` (focused); ``patch`` (its number) and
    ``parent`` (the patch run's folder) for one patch; ``patches`` and ``composite_report`` (on
    disk "composite") for a patch run; ``consensus``, ``conversion`` and ``conf2pose`` (its
    parameters) for conformation to pose; ``pose_precision`` (focused-like runs): the Cramér–Rao
    bound of a per-particle pose of the focus region ("region") and of the whole particle
    ("particle") at the run's first band (:mod:`gmmcore.gmm.precision`)."""

    kind: Union[RunKind, str] = RunKind.GLOBAL
    params: dict = field(default_factory=dict)
    device: str = ""
    n_particles: Dict[str, int] = field(default_factory=dict)
    initial: Optional[HalfMapReport] = None
    iterations: List[IterationRecord] = field(default_factory=list)
    final: Optional[FinalFiles] = None
    patches: Optional[List[PatchRecord]] = None
    split: Optional[str] = None
    split_note: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    start: Optional[StartRecord] = None
    patch: Optional[int] = None
    parent: Optional[str] = None
    composite_report: Optional[HalfMapReport] = None
    consensus: Optional[HalfMapReport] = None
    conversion: Optional[Conversion] = None
    conf2pose: Optional[dict] = None
    pose_precision: Optional[Dict[str, PosePrecision]] = None
    extra: dict = field(default_factory=dict)
    directory: str = ""  # where it was loaded from (not written)

    def to_json(self) -> dict:
        d = {"schema": SCHEMA_VERSION, "kind": self.kind, "params": self.params, "device": self.device,
             "n_particles": self.n_particles, "iterations": [r.to_json() for r in self.iterations]}
        if self.initial is not None:
            d["initial"] = self.initial.to_json()
        if self.final is not None:
            d["final"] = self.final.to_json()
        if self.patches is not None:
            d["patches"] = [r.to_json() for r in self.patches]
        for key, attr in _RUN_OPTIONAL.items():
            value = getattr(self, attr)
            if value is not None and value != []:
                d[key] = (value.to_json() if hasattr(value, "to_json") else
                          asdict(value) if isinstance(value, StartRecord) else
                          {k: v.to_json() for k, v in value.items()} if attr == "pose_precision" else value)
        d.update(self.extra)
        return d

    def save(self, folder=None) -> None:
        _write(os.path.join(str(folder or self.directory), SUMMARY_NAME), self.to_json())

    @classmethod
    def from_json(cls, data: dict, directory: str = "") -> "RunSummary":
        data = dict(data)
        data.pop("schema", None)
        data.pop("directory", None)
        typed = {attr: data.pop(key) for key, attr in _RUN_OPTIONAL.items() if key in data}
        known, extra = _known(cls, data)
        s = cls(**{k: v for k, v in known.items() if k not in ("initial", "iterations", "final", "patches")},
                extra=extra, directory=directory)
        s.kind = RunKind.of(s.kind)
        if known.get("initial"):
            s.initial = HalfMapReport.from_json(known["initial"])
        s.iterations = [IterationRecord.from_json(r) for r in known.get("iterations", [])]
        if known.get("final"):
            s.final = FinalFiles.from_json(known["final"])
        if known.get("patches") is not None:
            s.patches = [PatchRecord.from_json(p) for p in known["patches"]]
        for attr, value in typed.items():
            setattr(s, attr, _typed(attr, value))
        return s

    @classmethod
    def load(cls, path_or_dir) -> "RunSummary":
        """From a ``summary.json`` path or a run folder."""
        data, folder = _read(path_or_dir)
        return cls.from_json(data, directory=folder)

    # ---- what readers need
    def path(self, key: str, half: Optional[int] = None) -> str:
        """Absolute path of a file of ``final`` (``key`` = particles, half1, half2, map, gmm, gmm_pdb,
        pose_changes, focus_mask, fsc_mask, weights; ``half`` 1/2 for gmm and gmm_pdb)."""
        if self.final is None:
            raise KeyError("the run has no final outputs yet")
        value = getattr(self.final, key, None)
        if value is None:
            value = self.final.extra.get(key)
        if value is None:
            raise KeyError(f"{key}: not among this run's final outputs")
        if half is not None:
            value = value[str(half)]
        return value if os.path.isabs(value) else os.path.join(self.directory or ".", value)

    def fsc_curves(self, masked: bool = True) -> List[Tuple[str, List[float], List[float], float]]:
        """[(label, freq 1/Å, FSC, resolution Å)] for the input poses and every iteration."""
        curves = []
        if self.initial is not None and self.initial.fsc:
            curves.append(("input poses", *self.initial.curve(masked)))
        for rec in self.iterations:
            curves.append(("iteration %d" % rec.iteration, *rec.report.curve(masked)))
        return curves

    def patch_records(self) -> List[PatchRecord]:
        """The patches of a patch-by-patch run (empty for other kinds)."""
        return list(self.patches or [])

    def patch_definition(self) -> PatchDefinition:
        """A patch run's ``patches.json`` (the K-means patches, the start GMMs, each Gaussian's patch)."""
        return PatchDefinition.load(self.directory or ".")

    def composite(self) -> Optional[HalfMapReport]:
        """The gold-standard FSC of a patch run's composite half maps (None for other kinds)."""
        return self.composite_report

    def rel(self, path: str) -> str:
        """A path of this summary (relative to its folder) made absolute."""
        return path if os.path.isabs(path) else os.path.join(self.directory or ".", path)

    @property
    def resolution_initial(self) -> Optional[float]:
        return None if self.initial is None else float(self.initial.resolution)

    @property
    def resolution_final(self) -> Optional[float]:
        if self.final is not None and self.final.resolution is not None:
            return float(self.final.resolution)
        return None


def _typed(attr: str, value: Any):
    """A mode field of RunSummary read from JSON."""
    if value is None:
        return None
    if attr in ("composite_report", "consensus"):
        return HalfMapReport.from_json(value)
    if attr == "conversion":
        return Conversion.from_json(value)
    if attr == "pose_precision":
        return {k: PosePrecision.from_json(v) for k, v in value.items()}
    if attr == "start":
        return StartRecord(source=value.get("source"), resolution=value.get("resolution"))
    return value


# ---------------------------------------------------------------------------------------------
# a heterogeneity analysis (``gmmcore heterogeneity``); ``gmmcore conf2pose`` writes a RunSummary
# of kind "conf2pose" (its conversion step in ``RunSummary.conversion``)


@dataclass
class LatentHalfReport:
    """One half set of a heterogeneity analysis.  ``history``: per epoch {"round", "epoch",
    "loss" (mean 1 − ring-weighted FRC), "frc", "seconds"}; ``frc_neutral`` / ``frc_decoded``: mean
    ring-weighted FRC of the half's particles against the neutral GMM / their decoded GMMs;
    ``gmm_fsc_neutral`` / ``gmm_fsc_decoder_zero``: mean map-vs-GMM FSC (within the band) of the
    neutral GMM and of the decoder at latent 0 against the half map; ``bins``: per PC1 bin
    {"pc1", "n", "gmm", "gmm_pdb", "map"} (paths relative to the run folder); ``mask_coverage``
    (with --mask): {"map_share", "gmm_share" (of the half map's density / of the neutral GMM's mass
    inside the mask), "low" (re-seed), "short" (warn)}, and where the run's GMM was re-seeded on the
    region, "region_seeded" and "before" (the run's GMM's shares)."""

    n_particles: int
    network: str
    history: List[dict] = field(default_factory=list)
    explained_variance_ratio: List[float] = field(default_factory=list)
    frc_neutral: Optional[float] = None
    frc_decoded: Optional[float] = None
    gmm_fsc_neutral: Optional[float] = None
    gmm_fsc_decoder_zero: Optional[float] = None
    n_gaussians: int = 0
    n_moving: int = 0
    n_anchors: int = 0
    pc1_flipped: bool = False
    bins: List[dict] = field(default_factory=list)
    mask_coverage: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> "LatentHalfReport":
        known, extra = _known(cls, data)
        known.setdefault("n_particles", 0)
        known.setdefault("network", "")
        return cls(**known, extra=extra)

    def losses(self, round_name: Optional[str] = None) -> List[float]:
        """Loss per epoch (of one round, or all)."""
        return [float(r["loss"]) for r in self.history if round_name in (None, r.get("round"))]


@dataclass
class HeterogeneitySummary:
    """``DIR/summary.json`` of ``gmmcore heterogeneity``: the source run, the band, one
    :class:`LatentHalfReport` per half set, and the latents files (``latents``: CSV with
    rlnImageName, half, z1..zL, pc1, pc2; ``latents_npz``: the same as float arrays)."""

    kind: Union[RunKind, str] = RunKind.HETEROGENEITY
    params: dict = field(default_factory=dict)
    device: str = ""
    source: str = ""
    latent_dim: int = 0
    resolution_A: Optional[float] = None
    minres_A: Optional[float] = None
    n_particles: Dict[str, int] = field(default_factory=dict)
    halves: Dict[str, LatentHalfReport] = field(default_factory=dict)
    latents: str = "final/latents.csv"
    latents_npz: str = "final/latents.npz"
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    directory: str = ""  # where it was loaded from (not written)

    def to_json(self) -> dict:
        d = {"schema": SCHEMA_VERSION, "kind": self.kind, "params": self.params, "device": self.device,
             "source": self.source, "latent_dim": self.latent_dim, "resolution_A": self.resolution_A,
             "minres_A": self.minres_A, "n_particles": self.n_particles,
             "halves": {h: r.to_json() for h, r in self.halves.items()}, "latents": self.latents,
             "latents_npz": self.latents_npz, "seconds": self.seconds}
        d.update(self.extra)
        return d

    def save(self, folder=None) -> None:
        _write(os.path.join(str(folder or self.directory), SUMMARY_NAME), self.to_json())

    @classmethod
    def from_json(cls, data: dict, directory: str = "") -> "HeterogeneitySummary":
        data = dict(data)
        data.pop("schema", None)
        known, extra = _known(cls, data)
        known.pop("directory", None)
        known["kind"] = RunKind.of(known.get("kind", RunKind.HETEROGENEITY))
        halves = {str(h): LatentHalfReport.from_json(r) for h, r in (known.pop("halves", None) or {}).items()}
        return cls(**known, halves=halves, extra=extra, directory=directory)

    @classmethod
    def load(cls, path_or_dir) -> "HeterogeneitySummary":
        data, folder = _read(path_or_dir)
        return cls.from_json(data, directory=folder)

    def path(self, relative: str) -> str:
        """Absolute path of a file named in this summary (relative to its folder)."""
        return relative if os.path.isabs(relative) else os.path.join(self.directory or ".", relative)


# ---------------------------------------------------------------------------------------------
# the map verbs: ``gmmcore reconstruct``, ``expand-symmetry``, ``local-resolution``


class _FlatSummary:
    """A verb's flat ``DIR/summary.json``: its fields, then ``extra`` (free-form keys)."""

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**d, **self.extra}

    def save(self, folder) -> None:
        _write(os.path.join(str(folder), SUMMARY_NAME), self.to_json())

    @classmethod
    def from_json(cls, data: dict):
        known, extra = _known(cls, data)
        return cls(**known, extra=extra)

    @classmethod
    def load(cls, path_or_dir):
        return cls.from_json(_read(path_or_dir)[0])


@dataclass
class ReconstructSummary(_FlatSummary):
    """``gmmcore reconstruct``: the half maps' FSC (``report``, written flat), the particles per
    half set, the grid (Å/px, box), the symmetry, padding, FSC mask ("auto" or its path), the
    particles' file and the time taken (s)."""

    report: HalfMapReport
    n_particles: Dict[str, int]
    apix: float
    box: int
    sym: str
    pad: float
    mask: str
    particles: str
    seconds: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = super().to_json()
        return {**d.pop("report").to_json(), **d}

    @classmethod
    def from_json(cls, data: dict) -> "ReconstructSummary":
        names = {f.name for f in fields(cls)} - {"report", "extra"}
        own = {k: v for k, v in data.items() if k in names}
        rep = HalfMapReport.from_json({k: v for k, v in data.items() if k not in names})
        return cls(report=rep, **own)

    @property
    def resolution(self) -> float:
        return float(self.report.resolution)


@dataclass
class ExpansionSummary(_FlatSummary):
    """``gmmcore expand-symmetry``: ``n_input`` particles × ``operators`` of ``sym`` =
    ``n_particles`` rows (``per_half``) in ``particles`` (relative to the folder), from ``source``;
    ``convention``: how a row's rotation is made."""

    sym: str
    operators: int
    n_input: int
    n_particles: int
    per_half: Dict[str, int]
    particles: str
    source: str
    convention: str
    extra: dict = field(default_factory=dict)


@dataclass
class LocalResolutionSummary(_FlatSummary):
    """``gmmcore local-resolution``: the map (``local_resolution``, Å per voxel, relative to the
    folder), the window and step (pixels), FSC threshold, Å/px, mask ("auto" or its path),
    ``within_mask`` {"median", "p10", "p90" (Å), "voxels"} and the two half maps."""

    local_resolution: str
    window_px: int
    step_px: int
    threshold: float
    apix: float
    mask: str
    within_mask: Dict[str, float]
    half1: str
    half2: str
    extra: dict = field(default_factory=dict)
