"""Heterogeneity and conf2pose plots write non-empty PNGs headless (fake runs written through the
engine's run contract); the viewers are registered for their protocols; latent attributes round
trip on a Scipion particle."""
import os

import numpy as np
import pytest

import gmm_fakes
from gmmrefine_scipion.plotting import heterogeneity as hplots


def _png_ok(path):
    assert os.path.exists(path) and os.path.getsize(path) > 5000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fake_het(tmp_path_factory):
    return gmm_fakes.write_heterogeneity_run(str(tmp_path_factory.mktemp("fake_het") / "heterogeneity"))


@pytest.fixture(scope="module")
def fake_c2p(tmp_path_factory):
    return gmm_fakes.write_conf2pose_run(str(tmp_path_factory.mktemp("fake_c2p") / "conf2pose"))


def test_heterogeneity_plots(fake_het, tmp_path):
    _png_ok(hplots.plot_latent(fake_het, str(tmp_path / "latent.png")))
    _png_ok(hplots.plot_loss(fake_het, str(tmp_path / "loss.png")))
    _png_ok(hplots.plot_pc1_maps(fake_het, str(tmp_path / "maps.png")))
    script = hplots.chimerax_series_script(fake_het, str(tmp_path / "series.cxc"))
    lines = open(script).read().splitlines()
    assert len(lines) == 3 and lines[0].startswith("open ") and lines[0].endswith("vseries true")
    assert lines[0].count("half1_bin") == 3 and all(os.path.isabs(p) for p in lines[0].split()[1:4])


def test_latents_read_back(fake_het):
    lat = hplots.read_latents(fake_het)
    assert lat["latent"].shape == (40, 3) and set(lat["half"]) == {1, 2}
    np.testing.assert_allclose(lat["pc1"], lat["latent"][:, 0], atol=1e-5)


def test_conf2pose_plots(fake_c2p, tmp_path):
    _png_ok(hplots.plot_region_fsc(fake_c2p, str(tmp_path / "region_fsc.png")))
    _png_ok(hplots.plot_conversion_pose_changes(fake_c2p, str(tmp_path / "pose.png")))


def test_viewers_registered():
    from pwem import Domain
    viewers = Domain.getViewers()
    assert "GmmHeterogeneityViewer" in viewers and "GmmConfToPoseViewer" in viewers
    from gmmrefine_scipion.protocols import GmmProtConfToPose, GmmProtHeterogeneity
    from gmmrefine_scipion.viewers import GmmConfToPoseViewer, GmmHeterogeneityViewer
    assert GmmProtHeterogeneity in GmmHeterogeneityViewer._targets
    assert GmmProtConfToPose in GmmConfToPoseViewer._targets


def test_latent_attribute_round_trip():
    from pwem.objects import Particle
    from gmmrefine_scipion import convert
    p = Particle()
    assert convert.get_latent(p) is None
    convert.set_latent(p, np.array([0.5, -1.25, 2.0], np.float32), 0.75, -0.5)
    latent, pc1, pc2 = convert.get_latent(p)
    assert latent == [0.5, -1.25, 2.0] and pc1 == 0.75 and pc2 == -0.5
