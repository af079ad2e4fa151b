"""The refinement iteration, called from a state: per half GMM → shape → align; reconstruct; FSC.

:func:`iterate` is the one loop body of global, focused and patch refinement.  Per half set h,
independently: the half map of the previous iteration (× the plan's fit mask, low-passed to the
target) → GMM_h (fitted within the band from K-means seeds, or with ``--gmm-start warm`` from half h's
own GMM of the last iteration, :mod:`gmmcore.gmm.warm`; loaded when a killed run resumes) → ``plan.shape_gmm``
→ local pose refinement of half h's particles against it.  Then both halves are reconstructed and
their FSC measured.  Nothing mixes the halves before the FSC; its resolution sets the next band
(the plan's rule), as in any gold-standard refinement.

Iteration 0 (the start's half maps, their FSC, the FSC mask) is :func:`gmmcore.refine.start.iteration0`.
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError
from ..fourier import lowpass
from ..fsc import half_map_report
from ..backend import get_backend
from ..gmm.align import AlignSet, align_sets
from ..gmm.build import build_gmm
from ..gmm.fidelity import cross_half_fidelity
from ..gmm.model import GMM
from ..gmm.warm import WARM_STEPS, warm_start
from ..grids import FourierGrid
from ..parallel import Unit, local_executor
from ..particles import HalfPair, ParticleTable, check_geometry
from ..reconstruct import reconstruct_halves
from ..summary import HalfMapReport, IterationRecord, PoseChange
from .rundir import IterationStore
from .state import IterationPlan, RefinementState

log = logging.getLogger("gmmcore.refine")


def fit_gmm_unit(h: int, half_map: np.ndarray, apix: float, band, fit_mask: Optional[np.ndarray],
                 ngauss: Optional[int], seed: int, store: IterationStore, backend: str,
                 gmm_fit: str = "fourier", previous: Optional[GMM] = None,
                 n_scale: float = 1.0, local_res: Optional[np.ndarray] = None) -> Tuple[object, dict]:
    """Work unit: half h's GMM of this iteration, loaded when saved by an earlier (killed) run,
    else fitted to the half map (× ``fit_mask``, low-passed to the band) and saved.  ``previous``:
    half h's GMM of the last iteration to start from (``--gmm-start warm``, :mod:`gmmcore.gmm.warm`;
    None: K-means seeds, the estimated number of Gaussians × ``n_scale``).  ``local_res`` (Å, the
    map's grid; ``--gmm-density local``): ``n_scale`` where the map is sharp, fading to ×1 where it
    is coarser (:func:`gmmcore.gmm.localwidth.seed_density`)."""
    saved = store.load_gmm(h)
    if saved is not None:
        return saved
    m = lowpass(half_map * fit_mask if fit_mask is not None else half_map, apix, band.resolution_A)
    try:
        if previous is not None:
            start = warm_start(previous, m, apix, band.resolution_A, n_gaussians=ngauss)
            kw = dict(init=start, iterations=WARM_STEPS)
        elif local_res is not None and ngauss is None:
            from ..gmm.localwidth import seed_density

            kw = dict(seed_density=seed_density(local_res, m, n_scale))
        else:
            kw = dict(n_gaussians=ngauss, n_scale=n_scale)
        gmm, rep = build_gmm(m, apix, band.resolution_A, seed=seed + h,
                             minres_A=band.minres_A, backend=get_backend(backend), hermitian=gmm_fit == "hermitian",
                             desc=f"iter {store.iteration} half {h} GMM fit", **kw)
    except InputError as exc:
        raise InputError(f"half {h}, iteration {store.iteration}: {exc.message} (is this half's map empty or "
                         "pure noise?)", path=store.folder / f"half{h}", field=exc.field) from None
    gmm.meta.update({"half": h, "iteration": store.iteration})
    store.save_gmm(h, gmm, rep)
    return gmm, rep


def _local_resolution(state: RefinementState, plan: IterationPlan, apix: float, seeded: bool) -> Optional[np.ndarray]:
    """The local resolution (Å) of ``state``'s half maps where the plan uses it (``--gmm-local-res
    on``; ``--gmm-density local`` when this iteration's GMMs are ``seeded``, not warm-started), else None."""
    if plan.gmm_local_res != "on" and not (plan.gmm_density == "local" and seeded):
        return None
    from .. import localres

    return localres.local_resolution(state.half_maps[1], state.half_maps[2], apix, mask=plan.fsc_mask)


def _local_widening(local: Optional[np.ndarray], plan: IterationPlan, apix: float, band_A: float):
    """GMM → GMM: blurred by the local resolution ``local`` (``--gmm-local-res on``,
    :mod:`gmmcore.gmm.localwidth`), else unchanged."""
    if plan.gmm_local_res != "on":
        return lambda g: g
    from ..gmm.localwidth import widen_to_local_resolution

    def widen(g):
        out = widen_to_local_resolution(g, local, apix, band_A)
        info = out.meta["local_res"]
        log.info("  half %s: %d of %d Gaussians blurred by their local resolution (σ up to +%.2f Å)",
                 g.meta.get("half", "?"), info["widened"], len(g), info["max_blur_A"])
        return out

    return widen


def best_scoring(rows: HalfPair, aligned: HalfPair, drop: float) -> Optional[np.ndarray]:
    """The table rows a half map is made from: per half, all but the ``drop`` fraction with the
    lowest alignment score (ties kept), sorted; None (every row) when nothing is dropped."""
    if not drop:
        return None
    keep = []
    for h in (1, 2):
        score = aligned[h].score
        cut = np.quantile(score, drop) if len(score) else 0.0
        keep.append(rows[h][score >= cut])
    return np.sort(np.concatenate(keep))


def iterate(table: ParticleTable, state: RefinementState, plan: IterationPlan, backend,
            store: IterationStore, executor=None) -> Tuple[RefinementState, IterationRecord]:
    """One iteration from ``state`` → (next state, its record).  Resumable through ``store``: a
    complete iteration is loaded, a partial one continues from its saved GMMs and chunks.

    ``executor`` (:mod:`gmmcore.parallel`; default: this process, in order) runs the work units:
    the two GMM fits, the alignment chunks of both halves, the reconstruction partial sums.  The
    iteration's result does not depend on it (alignment chunks are the same whatever runs them)."""
    it = store.iteration
    if store.complete:
        new = store.load_state()
        log.info("iteration %d already complete (%.2f Å)", it, new.resolution_A)
        return new, store.record()
    t0 = time.time()
    box, apix = check_geometry(table)
    band = plan.band_of(state)
    log.info("iteration %d: target resolution %.2f Å", it, band.resolution_A)

    ex = executor or local_executor()
    # --gmm-start warm: half h's GMM starts from half h's GMM of the last iteration of this run (never
    # the other half's; iteration 1 — whose state carries no GMM of this run — is seeded)
    warm = plan.gmm_start == "warm" and state.iteration >= 1 and state.gmms is not None
    local_res = _local_resolution(state, plan, apix, seeded=not warm)
    seed_local = local_res if plan.gmm_density == "local" else None
    fitted = HalfPair(*ex.run([Unit(f"iter {it} half {h} GMM fit", fit_gmm_unit,
                                    (h, state.half_maps[h], apix, band, plan.fit_mask, plan.ngauss, plan.seed, store,
                                     backend.name, plan.gmm_fit, state.gmms[h] if warm else None, plan.gmm_n_scale,
                                     seed_local))
                              for h in (1, 2)]))
    for h, (g, rep) in fitted.items():
        log.info("  half %d: GMM of %d Gaussians, map-vs-GMM FSC %.3f", h, len(g), float(rep.get("fsc_mean", np.nan)))
    # reported only (both GMMs exist by now; nothing flows back into either half); not where both halves
    # start from the same map (--ref), which has no second half's noise to tell signal by
    cross = {}
    if not np.array_equal(state.half_maps[1], state.half_maps[2]):
        cross = cross_half_fidelity({h: fr[0] for h, fr in fitted.items()}, state.half_maps, apix,
                                    band.resolution_A, band.minres_A, backend=backend)
        log.info("  GMMs against the other half map: %.3f / %.3f (a GMM equal to the truth: %.3f)",
                 cross["1"], cross["2"], cross["ceiling"])
    # The plan's shape applies to the GMM whether it was just fitted or loaded: one place, never saved.
    local = _local_widening(local_res, plan, apix, band.resolution_A)
    shaped = fitted.map(lambda h, fr: plan.shape_gmm(h, local(fr[0])))

    grid = FourierGrid(box, apix, band.resolution_A, band.minres_A)
    rows = table.half_rows()
    search_from = plan.prior if plan.align_from == "prior" and plan.prior is not None else state.poses
    aligned = HalfPair(*align_sets([AlignSet(f"iter {it} half {h} alignment", rows[h], shaped[h], store.checkpoints(h))
                                    for h in (1, 2)], table, search_from, grid, plan.align, prior=plan.prior,
                                   backend=backend, executor=ex))
    poses = state.poses
    for h, res in aligned.items():
        poses = poses.with_rows(rows[h], res.poses)
        log.info("  half %d: mean FRC %.4f -> %.4f", h, float(res.score0.mean()), float(res.score.mean()))
    store.save_poses(poses)
    change = PoseChange.of(*poses.change_from(state.poses, apix))
    frc = {"before": {str(h): float(r.score0.mean()) for h, r in aligned.items()},
           "after": {str(h): float(r.score.mean()) for h, r in aligned.items()}}
    kept = best_scoring(rows, aligned, plan.drop_worst)
    del aligned, res  # their poses are in ``poses``: not held while the halves are reconstructed

    maps = reconstruct_halves(table.with_poses(poses), sym=plan.sym, pad=plan.pad, chunk=plan.align.chunk,
                              indices=kept, executor=ex, backend=backend, desc=f"iter {it}")
    store.save_half_maps(maps, apix)
    rep = HalfMapReport.from_json({**half_map_report(maps[1], maps[2], apix, plan.fsc_mask),
                                   **plan.extra_report(maps)})
    record = IterationRecord(
        iteration=it, target_resolution=band.resolution_A, report=rep, pose_change=change,
        frc=frc,
        gmm_fsc={str(h): float(fr[1].get("fsc_mean", float("nan"))) for h, fr in fitted.items()},
        n_gaussians={str(h): len(fr[0]) for h, fr in fitted.items()},
        seconds=time.time() - t0, dir=store.name,
        gmm_cross_fsc={h: cross[h] for h in ("1", "2") if h in cross},
        gmm_fsc_ceiling=cross.get("ceiling", float("nan")))
    store.finish(record)
    log.info("  resolution %.2f Å (masked), %.2f Å (unmasked); pose change %.2f° / %.2f px; %.0f s",
             rep.resolution_masked, rep.resolution_unmasked, change.angle_mean, change.shift_mean, record.seconds)
    return RefinementState(it, poses, maps, rep.resolution, fitted.map(lambda h, fr: fr[0])), record
