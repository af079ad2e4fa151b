"""Scores against a generated set's truth (see generate.py): pose errors of a star (truth.npz) and
half maps against the truth map inside the set's masks."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from gmmcore.fsc import fsc, fsc_masked, resolution_at
from gmmcore.geometry import angular_distance
from gmmcore.io.maps import read_map
from gmmcore.io.star import read_star

MASKS = {"domain": "domain_mask.mrc", "domain2": "domain2_mask.mrc", "core": "core_mask.mrc",
         "particle": "particle_mask.mrc"}  # domain2: a two-body set's domain B (only where the set has it)


def truth_rows(tab) -> np.ndarray:
    """Each particle's row in the set's truth.npz: its image index, from rlnImageOriginalName (imported
    and refined stars) or else rlnImageName."""
    names = tab.image_name
    sp = tab.star_particles
    if sp is not None and "rlnImageOriginalName" in sp.columns:
        names = sp["rlnImageOriginalName"].to_numpy()
    return np.array([int(str(nm).split("@")[0]) - 1 for nm in names])


def pose_errors(star, set_dir) -> dict:
    """Per particle of ``star`` (rows matched to the set by image index: rlnImageOriginalName for
    imported / refined stars, else rlnImageName): ``core_deg`` angle to the true rotation A,
    ``domain_deg`` angle to the domain's rotation A·Q, ``shift_px`` |origin − true origin| (pixels);
    a two-body set also ``domain2_deg`` (domain B's)."""
    truth = np.load(Path(set_dir) / "truth.npz")
    tab = read_star(star, need_stacks=False)
    idx = truth_rows(tab)
    out = {"core_deg": angular_distance(tab.rotation, truth["rotations"][idx]),
           "domain_deg": angular_distance(tab.rotation, truth["domain_pose_rotations"][idx]),
           "shift_px": np.linalg.norm(tab.origin - truth["origins_A"][idx], axis=1) / tab.apix}
    if "domain2_pose_rotations" in truth:
        out["domain2_deg"] = angular_distance(tab.rotation, truth["domain2_pose_rotations"][idx])
    return out


def map_scores(h1: np.ndarray, h2: np.ndarray, set_dir: Path, apix: float, masks: Optional[dict] = None) -> dict:
    """Half-map FSC-0.143 and map-vs-truth FSC (0.5, mean over the band) inside each mask
    (default: the set's domain, core and particle masks; or {name: mask file}); the map is the
    mean of the halves, its band up to 2/3 Nyquist."""
    truth = read_map(set_dir / "truth_map.mrc")[0].astype(np.float64)
    avg = 0.5 * (h1 + h2)
    out = {}
    set_dir = Path(set_dir)
    for name, f in (masks or {k: set_dir / v for k, v in MASKS.items() if (set_dir / v).is_file()}).items():
        mask = read_map(f)[0].astype(np.float64)
        freq, curve = fsc_masked(h1, h2, apix, mask)
        freq_t, curve_t = fsc(avg * mask, truth * mask, apix)
        band = (freq_t > 0) & (freq_t <= (2.0 / 3.0) / (2.0 * apix))
        out[name] = {"fsc0143_A": round(resolution_at(freq, curve, 0.143), 3),
                     "truth_fsc05_A": round(resolution_at(freq_t, curve_t, 0.5), 3),
                     "truth_fsc_mean": round(float(curve_t[band].mean()), 4)}
    return out


def read_halves(folder: Path, pattern: str = "half{}.mrc") -> tuple:
    """(half 1, half 2) float64 arrays of ``folder``/``pattern`` (e.g. a run's final/ or a score
    folder's ``relion_half{}.mrc``)."""
    return tuple(read_map(folder / pattern.format(s))[0].astype(np.float64) for s in (1, 2))
