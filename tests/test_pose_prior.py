"""The MAP pose prior (PoseSettings.prior_angle_deg / prior_shift_px) has the right limits:
a tight prior holds every particle at the prior centre; a very wide one changes nothing."""
import numpy as np

from gmmcore.geometry import angular_distance, perturb_rotations, random_rotations
from gmmcore.backend import PoseSettings
from gmmcore.gmm.align import PoseRefiner
from gmmcore.gmm.render import project_images
from gmmcore.grids import FourierGrid
from gmmcore.gmm.model import GMM


def _problem():
    rng = np.random.default_rng(3)
    gmm = GMM(rng.normal(size=(150, 3)) * [9, 6, 4], rng.uniform(0.5, 1.5, 150), np.full(150, 2.0))
    R = random_rotations(24, rng)
    o = rng.normal(size=(24, 2))
    grid = FourierGrid(48, 1.5, 6.0, 30.0)
    ft = grid.image_ft(project_images(gmm, R, o, 1.5, 48))
    start = perturb_rotations(R, 3.0, rng)
    return gmm, grid, ft, R, o, start


def test_prior_limits():
    gmm, grid, ft, R, o, start = _problem()
    free = PoseRefiner(gmm, grid, PoseSettings(steps=10), batch=8).refine(ft, start, o)
    assert angular_distance(free[0], R).mean() < 1.5  # noiseless: the data alone fixes most of 3°

    wide = PoseRefiner(gmm, grid, PoseSettings(steps=10, prior_angle_deg=1e4, prior_shift_px=1e4),
                         batch=8, data_scale=100.0).refine(ft, start, o)
    assert np.allclose(angular_distance(wide[0], free[0]), 0, atol=1e-2)
    assert np.allclose(wide[1], free[1], atol=1e-2)

    tight = PoseRefiner(gmm, grid, PoseSettings(steps=10, prior_angle_deg=1e-3, prior_shift_px=1e-3),
                          batch=8, data_scale=1.0).refine(ft, start, o)
    assert angular_distance(tight[0], start).max() < 0.05  # held at the prior centre (the start pose)
    assert np.abs(tight[1] - o).max() < 0.05

    # prior centred on the truth pulls a perturbed start towards it even with weak data
    pulled = PoseRefiner(gmm, grid, PoseSettings(steps=10, prior_angle_deg=0.5, prior_shift_px=0.5),
                           batch=8, data_scale=1e-3).refine(ft, start, o, prior_rotations=R, prior_origins_A=o)
    assert angular_distance(pulled[0], R).mean() < angular_distance(start, R).mean() - 1.0
