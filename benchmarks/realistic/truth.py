"""Pose errors of a star against a generated set's truth (truth.npz; see generate.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gmmcore.geometry import angular_distance
from gmmcore.io.star import read_star


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
    ``domain_deg`` angle to the domain's rotation A·Q, ``shift_px`` |origin − true origin| (pixels)."""
    truth = np.load(Path(set_dir) / "truth.npz")
    tab = read_star(star, need_stacks=False)
    idx = truth_rows(tab)
    return {"core_deg": angular_distance(tab.rotation, truth["rotations"][idx]),
            "domain_deg": angular_distance(tab.rotation, truth["domain_pose_rotations"][idx]),
            "shift_px": np.linalg.norm(tab.origin - truth["origins_A"][idx], axis=1) / tab.apix}
