"""Focused refinement after the conversion — the plan API (IterationPlan + loop.iterate + shape_gmm).

Stand-in until the focused-refinement module of the focused/patch issue is merged: the same
focus rule (DESIGN.md §3): every Gaussian's width becomes σ / (0.25 + 0.75·m), m the mask at its
centre (so Gaussians outside the mask are 4× wider), applied by the plan's ``shape_gmm`` hook after
every fit and resume load, never saved; FSC in the mask; band following the measured (masked)
resolution; pose prior centred on the poses the focused refinement starts from.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..backend import PoseSettings
from ..gmm.align import AlignSettings
from ..gmm.build import sample_map
from ..gmm.model import GMM
from ..particles import ParticleTable, check_geometry
from ..refine import loop
from ..refine.state import IterationPlan, RefinementState, follow_fsc


def focus_shape(mask: np.ndarray, apix: float) -> Callable[[int, GMM], GMM]:
    """The ``shape_gmm`` hook of focused refinement with ``mask``."""
    def shape(half: int, gmm: GMM) -> GMM:
        m = np.clip(sample_map(mask, apix, gmm.centers), 0.0, 1.0)
        return GMM(gmm.centers, gmm.amplitudes, gmm.sigmas / (0.25 + 0.75 * m), dict(gmm.meta))
    return shape


def focused_iterations(table: ParticleTable, state: RefinementState, mask: np.ndarray, p, run, backend,
                       summary) -> RefinementState:
    """``p.focus_iter`` focused iterations from ``state`` (iteration 0 of ``run``); each record is
    appended to ``summary`` and saved.  ``p``: Conf2PoseParams (minres, maxres, focus_steps,
    prior_angle/shift, batch, chunk, seed)."""
    _, apix = check_geometry(table)
    pose = PoseSettings(steps=p.focus_steps, prior_angle_deg=p.prior_angle, prior_shift_px=p.prior_shift)
    plan = IterationPlan(sym="C1", fsc_mask=mask, band=follow_fsc(p.minres, apix, p.maxres),
                         align=AlignSettings(pose=pose, batch=p.batch, chunk=p.chunk), shape_gmm=focus_shape(mask, apix),
                         prior=state.poses, seed=p.seed)
    for i in range(1, int(p.focus_iter) + 1):
        state, record = loop.iterate(table, state, plan, backend, run.iteration(i))
        summary.iterations.append(record)
        summary.save()
    return state
