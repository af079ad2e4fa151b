"""The coarse start search (``--search-angle``, :mod:`gmmcore.gmm.start_search`) against known answers.

Noiseless projections of a random GMM at known poses; each start pose is the truth turned by one of
the candidate turns (about a centre off the box centre, the origin moved to match), so the search
must give back the true pose exactly.  A prior much narrower than the turns keeps the start, and
local refinement alone does not get from an 8° start to the truth — the search does.
"""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gmmcore.backend import PoseSettings, get_backend
from gmmcore.geometry import angular_distance, random_rotations
from gmmcore.gmm.align import PoseRefiner
from gmmcore.gmm.model import GMM
from gmmcore.gmm.render import project_images
from gmmcore.gmm.start_search import AXES, best_starts, candidate_turns, mask_centre_A, prior_penalty
from gmmcore.grids import FourierGrid, normalised_ring_weights

APIX, BOX = 1.5, 48
CENTRE = np.array([6.0, -4.5, 3.0])  # Å from the box centre: the turns' centre
ANGLE = 8.0


def _problem(n=24, seed=5):
    rng = np.random.default_rng(seed)
    gmm = GMM(rng.normal(size=(150, 3)) * [9, 6, 4], rng.uniform(0.5, 1.5, 150), np.full(150, 2.0))
    R = random_rotations(n, rng)
    o = rng.normal(size=(n, 2))
    grid = FourierGrid(BOX, APIX, 6.0, 30.0)
    ft = grid.image_ft(project_images(gmm, R, o, APIX, BOX))
    # start = a candidate turn E away from the truth about CENTRE: truth = E·start, origin to match
    turns = candidate_turns(ANGLE)
    pick = rng.integers(1, len(turns), n)
    start = np.einsum("kji,kjl->kil", turns[pick], R)  # Eᵀ·R
    start_o = o - ((R - start) @ CENTRE)[:, :2]
    return gmm, grid, ft, R, o, start, start_o, turns[pick]


def test_candidate_turns_are_the_identity_and_half_and_full_turns_about_six_axes():
    turns = candidate_turns(10.0)
    assert turns.shape == (25, 3, 3)
    assert np.allclose(turns[0], np.eye(3))
    angles = np.degrees(np.linalg.norm(Rotation.from_matrix(turns).as_rotvec(), axis=1))
    assert np.allclose(np.sort(angles), [0] + [5.0] * 12 + [10.0] * 12)
    assert np.allclose(np.linalg.norm(AXES, axis=1), 1.0)
    cosines = np.abs(AXES @ AXES.T)[np.triu_indices(6, 1)]
    assert np.allclose(cosines, 1 / np.sqrt(5))  # icosahedron's vertex axes: 63.4° apart


def test_search_recovers_the_true_pose_turned_about_a_centre():
    gmm, grid, ft, R, o, start, start_o, _ = _problem()
    w = normalised_ring_weights(None, grid.nrings)
    Rb, ob, angle = best_starts(get_backend("tf"), gmm, grid, ft, start, start_o, start, start_o, w, None,
                                PoseSettings(), ANGLE, tuple(CENTRE))
    assert angular_distance(Rb, R).max() < 1e-3
    assert np.abs(ob - o).max() < 1e-3  # the centre projects where it did: the true origin back
    assert np.all(angle > 0)


def test_a_prior_narrower_than_the_turns_keeps_the_start():
    gmm, grid, ft, R, o, start, start_o, _ = _problem()
    w = normalised_ring_weights(None, grid.nrings)
    Rb, ob, angle = best_starts(get_backend("tf"), gmm, grid, ft, start, start_o, start, start_o, w, 1.0,
                                PoseSettings(prior_angle_deg=0.5, prior_shift_px=0.5), ANGLE, tuple(CENTRE))
    assert np.all(angle == 0)
    assert np.allclose(Rb, start) and np.allclose(ob, start_o)


def test_prior_penalty_is_the_optimisers_for_a_known_turn():
    P = random_rotations(3, np.random.default_rng(1))
    E = Rotation.from_rotvec([0.0, 0.0, np.radians(4.0)]).as_matrix()
    R = E[None] @ P
    pen = prior_penalty(R, np.zeros((3, 2)) + [0.3, 0.0], P, np.zeros((3, 2)), PoseSettings(prior_angle_deg=2.0,
                                                                                       prior_shift_px=1.0), apix=1.5)
    expected = 0.5 * np.sin(np.radians(4.0)) ** 2 / np.radians(2.0) ** 2 + 0.5 * 0.3 ** 2 / 1.5 ** 2
    assert np.allclose(pen, expected)
    assert np.allclose(prior_penalty(R, np.zeros((3, 2)), P, np.zeros((3, 2)), PoseSettings(), 1.5), 0.0)


@pytest.mark.parametrize("search", [0.0, ANGLE])
def test_local_refinement_reaches_an_8_degree_offset_only_after_the_search(search):
    gmm, grid, ft, R, o, start, start_o, _ = _problem()
    w = normalised_ring_weights(None, grid.nrings)
    R0, o0 = start, start_o
    if search:
        R0, o0, _ = best_starts(get_backend("tf"), gmm, grid, ft, start, start_o, start, start_o, w, None,
                                PoseSettings(), search, tuple(CENTRE))
    out = PoseRefiner(gmm, grid, PoseSettings(steps=10), batch=8).refine(ft, R0, o0)
    err = angular_distance(out[0], R)
    if search:
        assert err.max() < 0.5
    else:  # 10 Adam steps of ≤ 0.5° cannot cover 8° (most particles stay ≥ 3° off)
        assert np.median(err) > 3.0


def test_a_focused_plan_turns_about_its_focus_mask_centre():
    from types import SimpleNamespace

    from gmmcore.refine.focused_run import FocusedParams, focused_plan

    table = SimpleNamespace(image_size=np.array([BOX]), apix=np.array([APIX]), source=None)
    m = np.zeros((BOX,) * 3, np.float32)
    m[BOX // 2 - 4:BOX // 2, BOX // 2:BOX // 2 + 6, BOX // 2 + 2:BOX // 2 + 10] = 1.0
    params = FocusedParams(out="unused", search_angle=6.0)
    plan = focused_plan(table, SimpleNamespace(poses=None), m, params, np.ones_like(m))
    assert plan.align.search_angle_deg == 6.0
    assert np.allclose(plan.align.search_centre_A, mask_centre_A(m, APIX))
    assert np.allclose(plan.align.search_centre_A, [5.5 * APIX, 2.5 * APIX, -2.5 * APIX])


def test_mask_centre_is_the_centre_of_mass_in_angstrom_xyz():
    m = np.zeros((BOX,) * 3, np.float32)
    m[BOX // 2 + 2, BOX // 2 - 3, BOX // 2 + 5] = 1.0  # z, y, x
    assert np.allclose(mask_centre_A(m, APIX), [5 * APIX, -3 * APIX, 2 * APIX])
    assert mask_centre_A(np.zeros_like(m), APIX) == (0.0, 0.0, 0.0)
