"""The simulator's moving domain and assemblies (``gmmcore simulate --domain / --copies``).

* the domain's atoms turn rigidly about the hinge by the recorded per-particle angle (uniform
  within ±the amplitude), the rest does not move;
* the images are exactly the projections of the moved atoms (the batched rigid-piece projection
  equals projecting the whole moved model), and the recorded domain pose explains the domain:
  the unmoved domain projected at (domain_pose_rotations, domain_pose_origins_A) equals the moved
  domain projected at the particle pose;
* copies: K copies placed by the point group, the true map has that symmetry, each copy's domain
  has its own angle;
* without --domain/--copies nothing changes (same truth, same images as before).
"""
import json

import mrcfile
import numpy as np
import pytest

from gmmcore.errors import InputError
from gmmcore.geometry import angular_distance
from gmmcore.gmm.model import GMM
from gmmcore.gmm.render import project_images
from gmmcore.simulate import (DOMAINS, assembly_coords, clean_particles, load_model, model_gmm, parse_domain,
                              simulate_dataset)


def test_parse_domain():
    assert parse_domain("lid") == DOMAINS["lid"] == ((122, 159),)
    assert parse_domain("NMP") == ((30, 59),)
    assert parse_domain("10-20, 40-41") == ((10, 20), (40, 41))
    for bad in ("abc", "20-10", "1-x"):
        with pytest.raises(InputError):
            parse_domain(bad)
    with pytest.raises(InputError):  # selects every atom
        load_model(domain="1-999")


def test_domain_moves_rigidly_about_hinge():
    m = load_model(domain="lid")
    dom = m["domain"]
    assert dom["atoms"].sum() == 302 and abs(np.linalg.norm(dom["axis"]) - 1) < 1e-12
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(np.deg2rad(10) * dom["axis"]).as_matrix()
    x0, x1 = assembly_coords(m), assembly_coords(m, domain_rotations=R[None])
    moved = np.linalg.norm(x1 - x0, axis=1)
    assert moved[~dom["atoms"]].max() == 0.0
    # rigid: pairwise distances inside the domain kept; every atom turned by 10° about the hinge
    a0, a1 = x0[dom["atoms"]] - dom["hinge"], x1[dom["atoms"]] - dom["hinge"]
    np.testing.assert_allclose(np.linalg.norm(a0, axis=1), np.linalg.norm(a1, axis=1), atol=1e-9)
    perp0 = a0 - np.outer(a0 @ dom["axis"], dom["axis"])
    perp1 = a1 - np.outer(a1 @ dom["axis"], dom["axis"])
    cosang = (perp0 * perp1).sum(1) / (np.linalg.norm(perp0, axis=1) * np.linalg.norm(perp1, axis=1))
    np.testing.assert_allclose(np.rad2deg(np.arccos(np.clip(cosang, -1, 1))), 10.0, atol=1e-6)
    # the LID swings by a few Å at its tip (a real motion at 4–6 Å resolution)
    assert 2.0 < moved.max() < 8.0, moved.max()


@pytest.fixture(scope="module")
def sim_domain(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim_domain")
    return simulate_dataset(d, n_particles=40, box=48, apix=2.5, snr=None, seed=4, domain="lid", domain_angle_deg=15,
                            copies="C2", show_progress=False)


def test_domain_truth_and_images(sim_domain):
    r = sim_domain
    z = np.load(r["truth"])
    n, K = 40, 2
    theta = z["domain_angle_deg"]
    assert theta.shape == (n, K) and np.abs(theta).max() <= 15 and np.ptp(theta) > 15
    assert not np.allclose(theta[:, 0], theta[:, 1])  # each copy its own angle
    # the local rotation turns by exactly |θ|; in the particle frame Q = S R Sᵀ (same angle)
    eye = np.broadcast_to(np.eye(3), z["domain_rotation"].shape)
    np.testing.assert_allclose(angular_distance(eye, z["domain_rotation_local"]), np.abs(theta), atol=1e-5)
    np.testing.assert_allclose(angular_distance(eye, z["domain_rotation"]), np.abs(theta), atol=1e-5)
    m = r["model"]
    stack = mrcfile.read(r["stack"])
    ctf = r["ctf"]
    for i in (0, 7):
        # batched rigid pieces == the whole moved model projected at once (then CTF)
        whole = project_images(model_gmm(m, domain_rotations=z["domain_rotation_local"][i]), z["rotations"][[i]],
                               z["origins_A"][[i]], 2.5, 48)
        from gmmcore.ctf import apply_ctf

        whole = apply_ctf(whole, ctf.subset([i]), 2.5)
        assert np.abs(stack[i] - whole[0]).max() < 1e-3 * np.abs(whole).max()
        unmoved = clean_particles(m, z["rotations"][[i]], z["origins_A"][[i]], ctf.subset([i]), 2.5, 48)
        assert np.abs(stack[i] - unmoved[0]).max() > 0.05 * np.abs(whole).max()
        # the recorded domain pose: copy k's unmoved domain at its pose == its moved domain at the particle's pose
        for k in range(K):
            natom = len(m["coords_a"])
            sel = np.zeros(K * natom, bool)
            sel[k * natom:(k + 1) * natom] = m["domain"]["atoms"]
            x0 = assembly_coords(m)[sel]
            x1 = assembly_coords(m, domain_rotations=z["domain_rotation_local"][i])[sel]
            amp, sig = np.tile(m["amplitudes"], K)[sel], np.tile(m["sigmas"], K)[sel]
            at_domain_pose = project_images(GMM(x0, amp, sig), z["domain_pose_rotations"][i, k][None],
                                            z["domain_pose_origins_A"][i, k][None], 2.5, 48)
            moved = project_images(GMM(x1, amp, sig), z["rotations"][[i]], z["origins_A"][[i]], 2.5, 48)
            assert np.abs(at_domain_pose - moved).max() < 1e-3 * np.abs(moved).max()
            # the motion in the particle frame: y = Q(z − h) + h about the recorded hinge
            Q, h = z["domain_rotation"][i, k], z["domain_hinge_A"][k]
            np.testing.assert_allclose((x0 - h) @ Q.T + h, x1, atol=1e-6)


def test_copies_symmetric_map_and_masks(sim_domain):
    r = sim_domain
    from gmmcore.fourier import lowpass

    # (low-passed: at 2.5 Å/px the atoms' Gaussians reach Nyquist, whose even-box sampling is not symmetric)
    vol = lowpass(mrcfile.read(r["true_map"]), 2.5, 8.0)
    # C2 about z: (x, y) → (−x, −y) about the box centre (index 24): the map is invariant
    flipped = np.roll(vol[:, ::-1, ::-1], (1, 1), axis=(1, 2))
    assert np.abs(flipped - vol).max() < 1e-3 * vol.max()
    # a copy is not at the centre: the map is not trivially symmetric about x alone
    assert np.abs(np.roll(vol[:, :, ::-1], 1, axis=2) - vol).max() > 0.1 * vol.max()
    info = json.loads(r["json"].read_text())
    assert info["n_copies"] == 2 and info["domain"]["n_atoms"] == 302
    assert info["files"]["domain_mask"] == "domain_mask.mrc" and info["files"]["unit_mask"] == "unit_mask.mrc"
    dm, um = mrcfile.read(r["domain_mask"]), mrcfile.read(r["unit_mask"])
    assert dm.max() == 1.0 and dm.min() == 0.0 and um.sum() > 2 * dm.sum()
    assert (dm <= um + 1e-6).all()  # the domain is part of copy 0
    # copy 0's unit mask covers about half of the assembly's density
    frac = float((vol * um).sum() / vol.sum())
    assert 0.45 < frac < 0.65, frac


def test_defaults_unchanged(tmp_path):
    """No domain, no copies: the same truth and images as the plain simulation."""
    kw = dict(n_particles=6, box=32, apix=2.0, snr=0.5, seed=9, show_progress=False)
    a = simulate_dataset(tmp_path / "a", **kw)
    b = simulate_dataset(tmp_path / "b", domain="lid", domain_angle_deg=0.0, **kw)
    for k in ("rotations", "origins_A", "rotations_perturbed", "half"):
        assert np.array_equal(a[k], b[k]), k
    np.testing.assert_allclose(mrcfile.read(a["stack"]), mrcfile.read(b["stack"]), atol=1e-4)
    assert "domain_angle_deg" not in np.load(a["truth"]) and "domain_mask" not in a


def test_whole_copy_as_domain(tmp_path):
    """--domain copy:2: the second copy of a C2 assembly swings about its interface, the first stays."""
    r = simulate_dataset(tmp_path / "c", n_particles=6, box=48, apix=2.5, snr=None, seed=2, copies="C2",
                         domain="copy:2", domain_angle_deg=15, show_progress=False)
    z = np.load(r["truth"])
    assert np.all(z["domain_angle_deg"][:, 0] == 0) and np.abs(z["domain_angle_deg"][:, 1]).max() > 5
    m = r["model"]
    n = len(m["coords_a"])
    x0 = assembly_coords(m)
    stack = mrcfile.read(r["stack"])
    from gmmcore.ctf import apply_ctf

    for i in np.argsort(-np.abs(z["domain_angle_deg"][:, 1]))[:3]:  # the three largest swings
        x1 = assembly_coords(m, domain_rotations=z["domain_rotation_local"][i])
        assert np.abs(x1[:n] - x0[:n]).max() == 0 and np.abs(x1[n:] - x0[n:]).max() > 1.0
        # the hinge (in the particle frame) does not move; the copy turns rigidly about it
        Q, h = z["domain_rotation"][i, 1], z["domain_hinge_A"][1]
        np.testing.assert_allclose((x0[n:] - h) @ Q.T + h, x1[n:], atol=1e-6)
        whole = apply_ctf(project_images(model_gmm(m, domain_rotations=z["domain_rotation_local"][i]),
                                         z["rotations"][[i]], z["origins_A"][[i]], 2.5, 48), r["ctf"].subset([i]), 2.5)
        assert np.abs(stack[i] - whole[0]).max() < 1e-3 * np.abs(whole).max()
    # the hinge lies at the interface: near both copies
    h = z["domain_hinge_A"][1]
    assert np.linalg.norm(x0[:n] - h, axis=1).min() < 6 and np.linalg.norm(x0[n:] - h, axis=1).min() < 6
    dm = mrcfile.read(r["domain_mask"])
    from gmmcore.masks import values_at

    inside = values_at(dm, x0, 2.5)
    assert inside[n:].mean() > 0.9 and inside[:n].mean() < 0.1  # the mask is the moving copy's
    with pytest.raises(InputError):
        load_model(copies="C2", domain="copy:3")
