"""Shared fixtures for the engine tests.

``sim_small``: one small simulated dataset per test session (ADK closed, 400 particles, box 48,
2 Å/px, SNR 0.1, perturbed by 3° / 1 px), made by :func:`gmmcore.simulate.simulate_dataset`.
It is the dict that function returns: paths (``out_dir``, ``stack``, ``true_star``,
``perturbed_star``, ``true_map``, ``truth``, ``json``) and truth arrays (``rotations`` (n,3,3)
RELION A, ``origins_A`` (n,2), ``rotations_perturbed``, ``origins_perturbed_A``, ``half``,
``optics_group``, ``conformation``, ``ctf`` (CTFParams)), plus ``n_particles``, ``box``,
``apix``, ``snr``, ``noise_sigma``, ``mask_radius_px``, ``seed`` and ``model`` (the atoms/GMM
parameters, see :func:`gmmcore.simulate.load_model`).  The stack is **not** phase flipped.

Treat the files as read-only (the fixture is shared); copy them to ``tmp_path`` to modify them.
"""
import os
import sys

import pytest

os.environ.setdefault("GMMCORE_NO_PROGRESS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIM_SMALL = dict(n_particles=400, box=48, apix=2.0, snr=0.1, perturb_angle_deg=3.0, perturb_shift_px=1.0,
                 max_origin_px=2.0, seed=7)


@pytest.fixture(scope="session")
def sim_small(tmp_path_factory):
    from gmmcore.simulate import simulate_dataset

    out = tmp_path_factory.mktemp("sim_small")
    return simulate_dataset(out, show_progress=False, **SIM_SMALL)


@pytest.fixture(autouse=True)
def _quiet_cli(monkeypatch):
    """CLI tests call gmmcore.cli.main in-process: no progress bars, and sys.argv restored after."""
    monkeypatch.setenv("GMMCORE_NO_PROGRESS", "1")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
