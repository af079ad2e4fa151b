"""The run contract: summaries written by gmmcore 0.1.0 load into the typed classes, nothing lost.

Fixtures: tests/data/runs_v0.1.0_modes (a finished global run, a focused run with ``--reimpose
C2`` and a two-patch run, written before every mode's fields were typed; JSON files only) and
tests/data/run_v0.1.0 (a global run killed in iteration 2).

* each summary loads, its mode's fields are typed attributes (nothing left in ``extra``), and
  writing it back gives the file it was read from (a patch run's composite loses only its
  ``"reimposed": null``);
* ``kind`` is a :class:`RunKind` that equals its old string;
* a patch run's ``patches.json`` loads as a :class:`PatchDefinition`;
* the verbs' small summaries (reconstruct, expand-symmetry, local-resolution) round-trip.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gmmcore.summary import (Conversion, ExpansionSummary, FinalFiles, HalfMapReport, LocalResolutionSummary,
                             PatchDefinition, PatchRecord, ReconstructSummary, ReimposedMaps, RunKind, RunSummary,
                             StartRecord)

DATA = Path(__file__).parent / "data"
MODES = DATA / "runs_v0.1.0_modes"


def _roundtrip(path: Path) -> RunSummary:
    raw = json.loads(path.read_text())
    s = RunSummary.load(path)
    out = s.to_json()
    if s.kind == RunKind.PATCHES and raw["final"].get("reimposed") is None:
        raw["final"].pop("reimposed", None)
    raw["schema"] = out["schema"]
    assert out == raw
    return s


@pytest.mark.parametrize("rel", ["global", "focused", "patches", "patches/patch_01", "patches/patch_02"])
def test_old_summaries_load_typed(rel):
    s = _roundtrip(MODES / rel / "summary.json")
    assert s.extra == {} and s.final is not None and s.final.extra == {}
    assert all(r.extra == {} and r.report.extra == {} for r in s.iterations)
    assert s.initial is not None and s.initial.extra == {}
    assert isinstance(s.final, FinalFiles) and isinstance(s.initial, HalfMapReport)


def test_old_modes_fields():
    g = RunSummary.load(MODES / "global")
    assert g.kind == "global" and g.kind is RunKind.GLOBAL and g.split == "input" and g.initial.seconds > 0

    f = RunSummary.load(MODES / "focused")
    assert f.kind is RunKind.FOCUSED and isinstance(f.start, StartRecord) and f.start.source
    assert f.final.focus_mask == "focus_mask.mrc" and f.final.fsc_mask == "fsc_mask.mrc"
    assert f.final.resolution_focus == f.iterations[-1].report.resolution_focus
    assert f.final.resolution_focus_initial == f.initial.resolution_focus
    freq, curve, res = f.initial.focus_curve()
    assert len(freq) == len(curve) and res == f.initial.resolution_focus
    assert isinstance(f.final.reimposed, ReimposedMaps) and f.final.reimposed.sym == "C2"
    assert f.final.reimposed.half1 == "final/reimposed_half1.mrc" and f.final.reimposed.resolution > 0

    p = RunSummary.load(MODES / "patches")
    assert p.kind is RunKind.PATCHES and p.final.weights == "final/weights.mrc" and p.final.reimposed is None
    assert p.path("weights").endswith("final/weights.mrc")
    recs = p.patch_records()
    assert len(recs) == 2 and all(isinstance(r, PatchRecord) and r.complete for r in recs)
    assert p.composite() is p.composite_report and p.composite().resolution == p.final.resolution
    d = p.patch_definition()
    assert isinstance(d, PatchDefinition) and d.k == 2 and [q["index"] for q in d.patches] == [1, 2]
    assert set(d.gmm) == set(d.labels) == {"1", "2"}
    for r in recs:
        one = RunSummary.load(p.rel(r.summary))
        assert one.kind is RunKind.PATCH and one.patch == r.index and one.parent
        assert one.final.resolution_focus == r.resolution_focus


def test_killed_v0_1_0_run_loads():
    s = RunSummary.load(DATA / "run_v0.1.0" / "run")
    assert s.kind is RunKind.GLOBAL and len(s.iterations) == 1 and s.final is None and s.extra == {}


def test_unknown_kind_and_free_form_extra_survive():
    s = RunSummary.from_json({"kind": "future-mode", "params": {}, "iterations": [], "note": {"a": 1}})
    assert s.kind == "future-mode" and s.extra == {"note": {"a": 1}}
    assert s.to_json()["kind"] == "future-mode" and s.to_json()["note"] == {"a": 1}


def test_conversion_and_consensus_typed():
    rep = {"resolution": 8.0, "resolution_unmasked": 9.0, "resolution_masked": 8.0,
           "fsc": {"freq": [0.1], "unmasked": [0.5], "masked": [0.6]}}
    conv = {"pose_change": {"angle_mean": 1.0, "angle_median": 0.5, "shift_mean": 0.2, "shift_median": 0.1},
            "pose_changes": "convert/pose_changes.npz", "particles": "convert/particles.star",
            "poses": "convert/poses.npz", "seconds": 3.0, "rmsd_before": {"1": 2.0, "2": 2.1},
            "rmsd_after": {"1": 1.0, "2": 1.1}, "resolution_region": 7.5, "heterogeneity": "/h", "consensus_run": "/c"}
    data = {"schema": 2, "kind": "conf2pose", "params": {}, "device": "", "n_particles": {}, "iterations": [],
            "initial": rep, "consensus": rep, "conversion": conv, "conf2pose": {"steps": 30}}
    s = RunSummary.from_json(data)
    assert s.kind is RunKind.CONF2POSE and isinstance(s.conversion, Conversion) and s.extra == {}
    assert s.conversion.pose_change.angle_mean == 1.0 and s.consensus.resolution == 8.0
    assert s.to_json() == data


def test_verb_summaries_roundtrip(tmp_path):
    rep = HalfMapReport(8.0, 9.0, 8.0, {"freq": [0.1], "unmasked": [0.5], "masked": [0.6]})
    r = ReconstructSummary(report=rep, n_particles={"1": 5, "2": 5}, apix=2.0, box=32, sym="C1", pad=2,
                           mask="auto", particles="p.star", seconds=1.0)
    r.save(tmp_path)
    raw = json.loads((tmp_path / "summary.json").read_text())
    assert raw["resolution"] == 8.0 and raw["sym"] == "C1" and "report" not in raw
    assert ReconstructSummary.load(tmp_path) == r and ReconstructSummary.load(tmp_path).resolution == 8.0
    e = ExpansionSummary(sym="C2", operators=2, n_input=3, n_particles=6, per_half={"1": 2, "2": 4},
                         particles="particles.star", source="/x.star", convention="A*S_k")
    e.save(tmp_path)
    assert ExpansionSummary.load(tmp_path) == e
    lr = LocalResolutionSummary(local_resolution="local_resolution.mrc", window_px=16, step_px=2, threshold=0.143,
                                apix=2.0, mask="auto", within_mask={"median": 5.0}, half1="/h1", half2="/h2")
    lr.save(tmp_path)
    assert LocalResolutionSummary.load(tmp_path) == lr


def test_partial_conversion_loads():
    """A conversion record with only some keys (e.g. a plugin test's forged run) still loads."""
    s = RunSummary.from_json({"kind": "conf2pose", "iterations": [], "conversion": {
        "pose_changes": "convert/pose_changes.npz", "pose_change": {"angle_mean": 5.0}, "resolution_region": 9.0}})
    assert s.conversion.pose_change.angle_mean == 5.0 and s.conversion.resolution_region == 9.0
    assert s.conversion.pose_changes == "convert/pose_changes.npz"
