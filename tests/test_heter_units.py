"""Units of the heterogeneity package, on synthetic GMMs (no particle files, seconds each).

* the conformation-to-pose objective through the engine's pose optimiser: a region turned by a
  known rotation Q about a point (and the particle at pose A) is brought to the region's own pose
  A·Q (and origin), to < 0.4° (mean; < 1.5° max) and < 0.1 px from 4° — and not to A·Qᵀ, which the other order of the
  two GMMs would give;
* the decoder is the neutral GMM at latent 0 (whatever its weights), moves only Gaussians with a
  motion weight, and anchors follow the K-means clusters;
* a saved network loads (NumPy only) and decodes the same; a file of a newer format version is
  refused with a one-line error naming the file.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gmmcore.backend import PoseSettings, ProjectionRMSDObjective
from gmmcore.errors import InputError
from gmmcore.geometry import angular_distance, random_rotations
from gmmcore.gmm.align import BatchedPoseOptimizer
from gmmcore.gmm.model import GMM
from gmmcore.grids import FourierGrid


def _two_domain_gmm(rng, n=160):
    c = rng.normal(0.0, 7.0, (n, 3))
    c[: n // 2, 0] += 16.0  # the region (first half of the Gaussians) sits off-centre along x
    return GMM(c, rng.uniform(0.5, 1.5, n), np.full(n, 2.5))


def test_projection_rmsd_objective_finds_region_pose():
    rng = np.random.default_rng(0)
    g = _two_domain_gmm(rng)
    n = len(g)
    region = np.arange(n) < n // 2
    k = 24
    A = random_rotations(k, rng)
    o = rng.normal(0.0, 2.0, (k, 2))
    angles = np.deg2rad(rng.choice([-1, 1], k) * 4.0)
    Q = Rotation.from_rotvec(np.outer(angles, [0.0, 0.6, 0.8])).as_matrix()
    pivot = g.centers[region].mean(0)
    conf = np.repeat(g.centers[None].astype(np.float64), k, 0)
    conf[:, region] = np.einsum("kij,nj->kni", Q, g.centers[region] - pivot) + pivot
    # truth: the unmoved region projected at (A·Q, o − (A(p − Q p))_xy) is the moved region at (A, o)
    B = A @ Q
    oB = o - np.einsum("kij,kj->ki", A[:, :2], pivot[None] - np.einsum("kij,j->ki", Q, pivot))
    weights = region.astype(np.float32)
    grid = FourierGrid(48, 2.0, 8.0, 0.0)
    opt = BatchedPoseOptimizer(ProjectionRMSDObjective(g, grid, weights),
                               PoseSettings(steps=30, lr_angle_deg=1.0, lr_shift_px=0.5, final_lr_fraction=0.1),
                               batch=8)
    R, on, score, score0 = opt.refine(A, o, conf_centers=conf, ref_rotations=A, ref_origins_A=o)
    ratio = score / score0  # scores are −RMSD: the RMSD after / before
    err = angular_distance(R, B)
    assert angular_distance(A, B).mean() == pytest.approx(4.0, abs=1e-6)
    assert err.mean() < 0.4 and err.max() < 1.5, err  # from 4°; out-of-plane turns converge slowest
    assert np.linalg.norm(on - oB, axis=1).mean() / 2.0 < 0.1
    assert np.median(ratio) < 0.15 and ratio.max() < 0.5, ratio
    # the other order would turn the region the wrong way: A·Qᵀ is 8° from the truth
    wrong = angular_distance(R, A @ np.swapaxes(Q, 1, 2))
    assert wrong.mean() > 7.5 and wrong.min() > 6.0, wrong


def test_projection_rmsd_objective_refuses_a_prior():
    g = _two_domain_gmm(np.random.default_rng(1))
    with pytest.raises(ValueError):
        BatchedPoseOptimizer(ProjectionRMSDObjective(g, FourierGrid(32, 2.0, 8.0, 0.0), np.ones(len(g))),
                             PoseSettings(prior_angle_deg=3.0, prior_shift_px=1.0))


def _layout_with_motion_weights(seed: int):
    """A two-domain GMM whose first half moves (weight 1) and next 10 Gaussians half (0.5) → (gmm, move, layout)."""
    from gmmcore.heter.decoder import make_layout

    g = _two_domain_gmm(np.random.default_rng(seed))
    move = np.zeros(len(g), np.float32)
    move[: len(g) // 2] = 1.0
    move[len(g) // 2: len(g) // 2 + 10] = 0.5
    return g, move, make_layout(g, move, n_anchors=8, seed=0)


def test_decoder_latent_zero_is_neutral_and_mask_holds_gaussians(tmp_path):
    import tensorflow as tf

    from gmmcore.heter.decoder import Decoder
    from gmmcore.heter.encoder import Encoder
    from gmmcore.heter.pair import HalfNetwork

    rng = np.random.default_rng(2)
    g, move, layout = _layout_with_motion_weights(2)
    assert len(layout.anchors) == 8 and len(layout.moving) == len(g) // 2 + 10
    np.testing.assert_allclose(layout.interp.sum(1), 1.0, rtol=1e-5)
    dec = Decoder.init(layout, latent_dim=3, rng=np.random.default_rng(5), anchor_scale=3.0)
    # random (non-zero) residual head too: latent 0 must still be the neutral GMM
    dec.full_head.w.assign(rng.normal(0, 1.0, dec.full_head.w.shape).astype(np.float32))
    dec.full_head.b.assign(rng.normal(0, 1.0, dec.full_head.b.shape).astype(np.float32))
    z = np.array([[0, 0, 0], [1.5, -2.0, 0.7]], np.float32)
    c = dec(tf.constant(z)).numpy()
    assert np.abs(c[0] - g.centers).max() < 1e-4
    moved = np.linalg.norm(c[1] - g.centers, axis=1)
    assert moved[move == 0].max() == 0.0 and moved[move == 1].mean() > 0.1
    # half-weight Gaussians move by half their displacement
    d_raw = dec.displacements(tf.constant(z))[0].numpy()[1]
    half_rows = np.searchsorted(layout.moving, np.flatnonzero(move == 0.5))
    np.testing.assert_allclose(c[1][move == 0.5] - g.centers[move == 0.5], d_raw[half_rows], atol=1e-5)

    enc = Encoder.init(3 * len(layout.moving), 3, input_scale=2.5, rng=np.random.default_rng(6))
    net = HalfNetwork(1, enc, dec, FourierGrid(48, 2.0, 8.0, 30.0), np.full(FourierGrid(48, 2.0, 8.0, 30.0).nrings, 0.1))
    path = tmp_path / "net.npz"
    net.save(path)
    back = HalfNetwork.load(path)
    np.testing.assert_array_equal(back.decoder(tf.constant(z)).numpy(), c)
    x = rng.normal(size=(4, 3 * len(layout.moving))).astype(np.float32)
    np.testing.assert_array_equal(back.encoder(tf.constant(x)).numpy(), enc(tf.constant(x)).numpy())
    assert back.grid.resolution_A == 8.0 and back.encoder.input_scale == 2.5

    # the file is plain NumPy + JSON; a newer version is refused, naming the file
    with np.load(path) as zf:
        arrays = {k: zf[k] for k in zf.files}
    arch = json.loads(str(arrays.pop("architecture")))
    assert arch["format"] == "gmmcore-heter-network" and arch["decoder"]["anchors"] == 8
    arch["version"] = 99
    bad = tmp_path / "newer.npz"
    np.savez(bad, architecture=np.array(json.dumps(arch)), **arrays)
    with pytest.raises(InputError) as exc:
        HalfNetwork.load(bad)
    assert str(bad) in str(exc.value) and "newer" in str(exc.value)


def test_conversion_batch_auto_gives_the_same_poses():
    """conf2pose's pose search is per particle: ``--batch auto`` (sized on the device) and a small
    fixed batch give the same converted poses."""
    from gmmcore.heter.conf2pose import convert_half
    from gmmcore.heter.decoder import Decoder, make_layout
    from gmmcore.heter.encoder import Encoder
    from gmmcore.heter.pair import HalfNetwork
    from gmmcore.particles import Poses

    rng = np.random.default_rng(4)
    g = _two_domain_gmm(rng, n=80)
    move = (np.arange(len(g)) < len(g) // 2).astype(np.float32)
    layout = make_layout(g, move, n_anchors=6, seed=0)
    dec = Decoder.init(layout, latent_dim=2, rng=np.random.default_rng(5), anchor_scale=3.0)
    # random (non-zero) residual head: the decoded conformations differ from the neutral GMM
    dec.full_head.w.assign(rng.normal(0, 1.0, dec.full_head.w.shape).astype(np.float32))
    dec.full_head.b.assign(rng.normal(0, 1.0, dec.full_head.b.shape).astype(np.float32))
    grid = FourierGrid(48, 2.0, 10.0, 30.0)
    net = HalfNetwork(1, Encoder.init(3 * len(layout.moving), 2, input_scale=2.5, rng=np.random.default_rng(6)), dec, grid,
                      np.full(grid.nrings, 0.1))
    k = 6
    latents = rng.normal(0.0, 2.0, (k, 2)).astype(np.float32)
    poses = Poses(random_rotations(k, rng), rng.normal(0.0, 2.0, (k, 2)))
    settings = PoseSettings(steps=5, lr_angle_deg=1.0, lr_shift_px=0.5, final_lr_fraction=0.1)
    fixed = convert_half(net, latents, poses, move, grid, settings, batch=4)
    auto = convert_half(net, latents, poses, move, grid, settings, batch="auto")
    assert angular_distance(fixed[0].rotation, auto[0].rotation).max() < 1e-3
    np.testing.assert_allclose(fixed[0].origin_A, auto[0].origin_A, atol=1e-3)
    assert angular_distance(fixed[0].rotation, poses.rotation).mean() > 0.01  # the search moved the poses


def test_decoder_amplitude_head_is_neutral_at_zero_bounded_and_saved(tmp_path):
    """The amplitude head (``--amplitude on``): at latent 0 the amplitudes are the neutral GMM's
    exactly, whatever the head's weights; elsewhere only moving Gaussians change, by a positive
    factor within e^±3·(motion weight); the network file keeps the head, and a decoder without one
    keeps the neutral amplitudes (also when loaded from a file made before the head existed)."""
    import tensorflow as tf

    from gmmcore.heter.decoder import Decoder
    from gmmcore.heter.encoder import Encoder
    from gmmcore.heter.pair import HalfNetwork

    rng = np.random.default_rng(4)
    g, move, layout = _layout_with_motion_weights(4)
    dec = Decoder.init(layout, latent_dim=3, rng=np.random.default_rng(5), amplitude=True)
    z = tf.constant(np.array([[0, 0, 0], [1.5, -2.0, 0.7], [-3.0, 1.0, 2.0]], np.float32))
    np.testing.assert_array_equal(dec.amplitudes(z).numpy(), np.tile(g.amplitudes.astype(np.float32), (3, 1)))
    dec.amplitude_head.w.assign(rng.normal(0, 3.0, dec.amplitude_head.w.shape).astype(np.float32))
    dec.amplitude_head.b.assign(rng.normal(0, 3.0, dec.amplitude_head.b.shape).astype(np.float32))
    a = dec.amplitudes(z).numpy()
    np.testing.assert_allclose(a[0], g.amplitudes, rtol=1e-6)  # still neutral at 0
    ratio = a[1:] / g.amplitudes[None].astype(np.float32)
    assert np.all(ratio[:, move == 0] == 1.0)
    assert np.all(ratio > 0) and np.abs(np.log(ratio[:, move == 1])).max() > 0.5  # the head acts
    assert np.all(np.abs(np.log(ratio)) <= 3.0 * move[None] + 1e-5)  # e^±3, scaled by the motion weight
    one = dec.gmm(np.array([1.5, -2.0, 0.7], np.float32))
    np.testing.assert_allclose(one.amplitudes, a[1], rtol=1e-6)

    enc = Encoder.init(3 * len(layout.moving), 3, input_scale=1.0, rng=np.random.default_rng(6))
    grid = FourierGrid(48, 2.0, 8.0, 30.0)
    path = tmp_path / "net.npz"
    HalfNetwork(1, enc, dec, grid, np.full(grid.nrings, 0.1)).save(path)
    back = HalfNetwork.load(path)
    np.testing.assert_array_equal(back.decoder.amplitudes(z).numpy(), a)

    plain = Decoder.init(layout, latent_dim=3, rng=np.random.default_rng(5))
    assert plain.amplitude_head is None and plain.spec()["amplitude"] is False
    HalfNetwork(1, enc, plain, grid, np.full(grid.nrings, 0.1)).save(path)
    with np.load(path) as zf:
        arrays = {k: zf[k] for k in zf.files}
    arch = json.loads(str(arrays.pop("architecture")))
    del arch["decoder"]["amplitude"]  # a network saved before the amplitude head existed
    old = tmp_path / "old.npz"
    np.savez(old, architecture=np.array(json.dumps(arch)), **arrays)
    loaded = HalfNetwork.load(old)
    assert loaded.decoder.amplitude_head is None
    np.testing.assert_array_equal(loaded.decoder.gmm(np.ones(3, np.float32)).amplitudes, g.amplitudes)


def test_projection_with_per_image_amplitudes_matches_one_at_a_time():
    """project_ft with amplitudes (B, N) — one set per image — equals B projections with (N,)."""
    import tensorflow as tf

    from gmmcore.backend.tf import project_ft

    rng = np.random.default_rng(8)
    g = _two_domain_gmm(rng, n=40)
    grid = FourierGrid(32, 2.0, 6.0, 30.0)
    R = random_rotations(3, rng).astype(np.float32)
    o = rng.normal(0, 1.0, (3, 2)).astype(np.float32)
    amps = (g.amplitudes[None] * rng.uniform(0.0, 2.0, (3, len(g)))).astype(np.float32)
    c, s = tf.constant(g.centers, tf.float32), tf.constant(g.sigmas, tf.float32)
    sy, sx = tf.constant(grid.sy), tf.constant(grid.sx)
    re, im = project_ft(c, tf.constant(amps), s, tf.constant(R), tf.constant(o), sy, sx)
    for b in range(3):
        re1, im1 = project_ft(c, tf.constant(amps[b]), s, tf.constant(R[b:b + 1]), tf.constant(o[b:b + 1]), sy, sx)
        np.testing.assert_allclose(re[b].numpy(), re1[0].numpy(), rtol=1e-5, atol=1e-5 * float(np.abs(re1).max()))
        np.testing.assert_allclose(im[b].numpy(), im1[0].numpy(), rtol=1e-5, atol=1e-5 * float(np.abs(im1).max()))


def test_training_band_defaults_to_7_A_or_the_coarser_run_resolution():
    from gmmcore.heter.analysis import training_band

    assert training_band(None, 3.8, 1.75) == 7.0  # a 3.8 Å run trains at the reference's 7 Å
    assert training_band(None, 9.5, 2.0) == 9.5  # never finer than the run's own resolution
    assert training_band(None, 3.0, 4.0) == 8.4  # nor than 2.1 pixels
    assert training_band(5.0, 3.8, 1.75) == 5.0  # --maxres wins


def test_an_older_run_made_at_the_final_resolution_keeps_it(tmp_path):
    import json

    from gmmcore.heter.analysis import made_with_final_resolution

    assert not made_with_final_resolution(tmp_path)  # nothing there: a new run
    (tmp_path / "params.json").write_text(json.dumps({"kind": "heterogeneity", "latent": 4, "res": None}))
    assert made_with_final_resolution(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps({"kind": "heterogeneity", "latent": 4, "res": 7.0}))
    assert not made_with_final_resolution(tmp_path)  # a run of this version records its band
    (tmp_path / "params.json").write_text("{not json")
    assert not made_with_final_resolution(tmp_path)


@pytest.mark.parametrize("occupancy", [1.0, 0.15])
def test_mask_coverage_flags_a_region_the_gmm_leaves_out(occupancy):
    """A particle of two blobs, the smaller one at ``occupancy`` (as in a consensus map where it is
    present in that fraction of the particles), in noise, low-passed as the analysis does; the GMM
    built by the engine's default rule.  At full occupancy the GMM holds at least the small blob's share
    of the map's density (no warning); at 0.15 the blob is below the GMM's threshold (noise-set here):
    the map still has it, the GMM holds none of it (warning).  The step is sharp (scanned: occupancy
    0.12–0.15 and noise σ 0.2–0.3 give a GMM share of 0–0.04 against the map's 0.02–0.03; full
    occupancy 0.28–0.38 against 0.19–0.25)."""
    from gmmcore.fourier import lowpass
    from gmmcore.gmm.build import build_gmm
    from gmmcore.heter.analysis import mask_coverage

    box, apix = 40, 2.0
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2) * apix
    blob = lambda cx, s: np.exp(-((x - cx) ** 2 + y ** 2 + z ** 2) / (2 * s ** 2))  # noqa: E731
    m = blob(-10.0, 7.0) + occupancy * blob(14.0, 5.0) + np.random.default_rng(0).normal(0.0, 0.3, x.shape)
    m = lowpass(m.astype(np.float32), apix, 8.0)
    mask = (np.sqrt((x - 14.0) ** 2 + y ** 2 + z ** 2) < 12.0).astype(np.float32)
    gmm, _ = build_gmm(m, apix, 8.0, seed=1, iterations=50)
    cov = mask_coverage(m, gmm, mask, apix)
    if occupancy == 1.0:
        assert cov["map_share"] > 0.1 and cov["gmm_share"] >= cov["map_share"] and not cov["low"], cov
    else:
        assert cov["map_share"] > 0.015 and cov["gmm_share"] < 0.005 and cov["low"], cov


def test_region_seeded_gmm_keeps_the_weak_region():
    """The case above that is flagged (a blob at occupancy 0.15, below the GMM's threshold): the GMM
    re-seeded on the masked region holds at least half the map's share of the density there (measured
    1.9–3.5× it over noise seeds 0–2 and K-means seeds 1–2: no longer flagged), and the large blob stays most
    of the GMM."""
    from gmmcore.fourier import lowpass
    from gmmcore.heter.analysis import mask_coverage, region_seeded_gmm

    box, apix = 40, 2.0
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2) * apix
    blob = lambda cx, s: np.exp(-((x - cx) ** 2 + y ** 2 + z ** 2) / (2 * s ** 2))  # noqa: E731
    raw = (blob(-10.0, 7.0) + 0.15 * blob(14.0, 5.0) + np.random.default_rng(0).normal(0.0, 0.3, x.shape))
    raw = raw.astype(np.float32)
    mask = (np.sqrt((x - 14.0) ** 2 + y ** 2 + z ** 2) < 12.0).astype(np.float32)
    gmm = region_seeded_gmm(raw, mask, apix, 8.0, seed=1, minres_A=25.0)
    cov = mask_coverage(lowpass(raw, apix, 8.0), gmm, mask, apix)
    assert cov["gmm_share"] >= 0.5 * cov["map_share"] and not cov["low"], cov
    assert cov["gmm_share"] < 0.5, cov  # the large blob is still most of the GMM
