"""Every plot writes a non-empty PNG headless; the Scipion viewer builds its views."""
import os

import pytest

import gmm_fakes
from gmmrefine_scipion.plotting import refine as plots


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake_refine")
    return gmm_fakes.write_refine_run(str(folder / "refine"))


def _png_ok(path):
    assert os.path.exists(path) and os.path.getsize(path) > 5000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("masked", [True, False, None])
def test_plot_fsc(fake_run, tmp_path, masked):
    _png_ok(plots.plot_fsc(fake_run, str(tmp_path / "fsc.png"), masked=masked))


def test_fsc_curves_and_resolution(fake_run):
    curves = plots.fsc_curves(fake_run)
    assert [c[0] for c in curves] == ["input poses", "iteration 1", "iteration 2"]
    assert curves[-1][3] < curves[0][3]
    # crossing of 0.143 interpolated between samples: 1 - f/0.2 crosses at f = 0.1714
    freq = [0.05, 0.1, 0.15, 0.2, 0.25]
    fsc = [1 - f / 0.2 for f in freq]
    assert plots.resolution_from_curve(freq, fsc) == pytest.approx(1 / (0.2 * (1 - 0.143)))


def test_plot_gmm_pose_resolution(fake_run, tmp_path):
    s = plots.load_summary(fake_run)
    _png_ok(plots.plot_gmm({h: plots.summary_path(s, "gmm", h) for h in ("1", "2")}, str(tmp_path / "g.png")))
    _png_ok(plots.plot_pose_changes(plots.summary_path(s, "pose_changes"), str(tmp_path / "p.png")))
    _png_ok(plots.plot_resolution(s, str(tmp_path / "r.png")))


def test_resolution_figure_adds_the_gmm_fidelity_where_recorded(fake_run, tmp_path):
    """A run of an older version (no fidelity figures) gets the resolution plot alone; a run that
    recorded them gets the GMM fidelity panel beside it, with each half's three curves and the ceiling."""
    assert len(plots.resolution_figure(fake_run).axes) == 1
    s = plots.load_summary(fake_run)
    for rec in s.iterations:
        rec.gmm_cross_fsc, rec.gmm_fsc_ceiling = {"1": 0.58, "2": 0.57}, 0.63
    fig = plots.resolution_figure(s)
    assert len(fig.axes) == 2
    assert len(fig.axes[1].get_lines()) == 5
    assert list(fig.axes[1].get_lines()[-1].get_ydata()) == [0.63] * len(s.iterations)
    _png_ok(plots._save(fig, str(tmp_path / "r.png")))


def test_plot_all(fake_run, tmp_path):
    out = plots.plot_all(fake_run, str(tmp_path / "all"))
    assert set(out) == {"fsc", "resolution", "gmm", "pose_changes"}
    for path in out.values():
        _png_ok(path)


def test_viewer_registered():
    from pwem import Domain
    assert "GmmRefineViewer" in Domain.getViewers()
    from gmmrefine_scipion.protocols import GmmProtRefine
    from gmmrefine_scipion.viewers import GmmRefineViewer
    assert GmmProtRefine in GmmRefineViewer._targets
