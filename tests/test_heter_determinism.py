"""Heterogeneity training is a function of its seed on one machine (seconds).

Two trainings of one half set with the same seed — each in a fresh trainer, with TensorFlow's op
determinism on (:func:`gmmcore.heter.training.deterministic_ops`) — give bit-identical network
weights and latents; another seed gives other latents.  A small simulated dataset (48 particles,
box 32, 3 Å/px) and a synthetic neutral GMM keep it fast (no GMM fit).  Across machines the
latents may differ (oneDNN, instruction set, TF version, GPU; see the training module's notes).
"""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from gmmcore.gmm.model import GMM
    from gmmcore.heter.decoder import make_layout
    from gmmcore.io.star import read_star
    from gmmcore.simulate import simulate_dataset

    sim = simulate_dataset(tmp_path_factory.mktemp("det") / "sim", n_particles=48, box=32, apix=3.0, snr=2.0,
                           seed=1, perturb_angle_deg=0.0, perturb_shift_px=0.0, show_progress=False)
    table = read_star(sim["true_star"], image_root=sim["out_dir"])
    rng = np.random.default_rng(0)
    neutral = GMM(rng.normal(0.0, 8.0, (40, 3)), rng.uniform(0.5, 1.5, 40), np.full(40, 3.0))
    return table, make_layout(neutral, None, 8, seed=0)


def _train(small, folder, seed):
    from gmmcore.grids import FourierGrid
    from gmmcore.heter.training import CheckpointStore, HalfTrainer, TrainSettings, encode

    table, layout = small
    rows = np.flatnonzero(table.half == 1)
    settings = TrainSettings(epochs=2, full_epochs=1, batch=8, n_sample=16, seed=seed)
    trainer = HalfTrainer(table, rows, layout, FourierGrid(32, 3.0, 9.0, 40.0), settings, 1, CheckpointStore(folder))
    trainer.train()
    net = trainer.network()
    return net, encode(net, table, rows, batch=8)["latent"]


def test_same_seed_gives_bit_identical_latents(small, tmp_path):
    net_a, z_a = _train(small, tmp_path / "a", seed=4)
    net_b, z_b = _train(small, tmp_path / "b", seed=4)
    assert z_a.dtype == np.float32 and z_a.shape[1] == 4 and np.isfinite(z_a).all()
    assert np.array_equal(z_a, z_b)
    wa = {**net_a.encoder.arrays(), **net_a.decoder.arrays()}
    wb = {**net_b.encoder.arrays(), **net_b.decoder.arrays()}
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    _, z_c = _train(small, tmp_path / "c", seed=5)
    assert not np.allclose(z_a, z_c)
