"""The Cramér–Rao bound of a per-particle pose (gmmcore.gmm.precision) against what it must obey:
it grows linearly with the noise, a part of the particle is bounded worse than the whole, and a
focused run reports it (and warns when its region is too weak). The bound's agreement with the
aligner's actual error on RELION-made particles is tested in tests/test_realistic.py (slow tier)."""
import numpy as np
import pytest

from gmmcore.backend import get_backend
from gmmcore.grids import FourierGrid
from gmmcore.io.maps import read_map
from gmmcore.io.star import read_star
from gmmcore.particles import Poses

SIM = dict(n_particles=120, box=48, apix=2.0, perturb_angle_deg=0.0, perturb_shift_px=0.0, seed=3, show_progress=False)


@pytest.fixture(scope="module")
def two_noise_levels(tmp_path_factory):
    """The same particles (poses, CTFs, noise pattern) at SNR 0.2 and 0.05 (noise σ × 2)."""
    from gmmcore.simulate import simulate_dataset

    return [simulate_dataset(tmp_path_factory.mktemp(f"snr{snr}"), snr=snr, **SIM) for snr in (0.2, 0.05)]


def _bound(sim, region_mask=None):
    from gmmcore.gmm.build import build_gmm
    from gmmcore.gmm.precision import pose_precision

    table = read_star(sim["true_star"])
    m, apix = read_map(sim["true_map"])
    be = get_backend("tf")
    gmm, _ = build_gmm(m, apix, 6.0, seed=0, backend=be)
    poses = Poses(sim["rotations"], sim["origins_A"])
    grid = FourierGrid(sim["box"], apix, 6.0, 25.0)
    return pose_precision(gmm, table, np.arange(len(table)), poses, grid, be, region_mask=region_mask)


def test_bound_grows_linearly_with_the_noise(two_noise_levels):
    lo, hi = (_bound(s) for s in two_noise_levels)
    ratio_sigma = two_noise_levels[1]["noise_sigma"] / two_noise_levels[0]["noise_sigma"]
    assert ratio_sigma == pytest.approx(2.0, rel=1e-3)
    # the noise is measured from the images (residual against the GMM), so the ratio is 2 up to that estimate
    assert lo.angle_deg / hi.angle_deg == pytest.approx(1 / ratio_sigma, rel=0.1), (lo, hi)
    assert lo.shift_px / hi.shift_px == pytest.approx(1 / ratio_sigma, rel=0.1), (lo, hi)
    assert lo.region_mass == 1.0 and lo.n_particles == 64  # the default sample of 64 of the 120 particles
    print("bounds", lo, hi)


def test_a_part_of_the_particle_is_bounded_worse_than_the_whole(two_noise_levels):
    sim = two_noise_levels[0]
    box = sim["box"]
    half_space = np.zeros((box,) * 3, np.float32)
    half_space[:, :, box // 2:] = 1.0  # x ≥ centre: about half the mass
    whole, part = _bound(sim), _bound(sim, half_space)
    assert 0.2 < part.region_mass < 0.8, part
    assert part.region_gaussians < whole.region_gaussians
    assert part.angle_deg > 1.2 * whole.angle_deg, (part, whole)
    print("bounds", whole, part)
    empty = np.zeros((box,) * 3, np.float32)
    assert _bound(sim, empty) is None
    # several regions in one call (images read and noise measured once): the same bounds
    from gmmcore.gmm.build import build_gmm
    from gmmcore.gmm.precision import pose_precisions

    table = read_star(sim["true_star"])
    m, apix = read_map(sim["true_map"])
    be = get_backend("tf")
    gmm, _ = build_gmm(m, apix, 6.0, seed=0, backend=be)
    together = pose_precisions(gmm, table, np.arange(len(table)), Poses(sim["rotations"], sim["origins_A"]),
                               FourierGrid(box, apix, 6.0, 25.0), be, [half_space, None, empty])
    assert together == [part, whole, None]


def test_focused_run_reports_the_bound_and_warns_when_the_region_is_weak():
    from gmmcore.refine.focused_run import precision_warning
    from gmmcore.summary import PosePrecision, RunSummary

    weak = PosePrecision(angle_deg=11.0, shift_px=0.6, axis_deg=(7.6, 7.6, 5.4), resolution_A=3.2,
                         region_gaussians=93, region_mass=0.21, n_particles=64)
    strong = PosePrecision(angle_deg=1.2, shift_px=0.1, axis_deg=(0.8, 0.8, 0.6), resolution_A=3.2,
                           region_gaussians=400, region_mass=0.8, n_particles=64)
    note = precision_warning(weak, 3.0)
    assert note and "at best to ±11.0°" in note and "±3°" in note
    assert precision_warning(strong, 3.0) is None
    assert precision_warning(weak, None) is not None  # no prior: the default 3°
    # the summary keeps it typed through JSON
    s = RunSummary(kind="focused", pose_precision={"region": weak, "particle": strong})
    back = RunSummary.from_json(s.to_json())
    assert back.pose_precision["region"] == weak and back.pose_precision["particle"] == strong


def test_conf2pose_warning_names_its_own_remedy():
    from gmmcore.refine.focused_run import precision_warning
    from gmmcore.summary import PosePrecision, RunKind

    weak = PosePrecision(angle_deg=9.0, shift_px=0.5, axis_deg=(6.0, 6.0, 4.0), resolution_A=4.0,
                         region_gaussians=50, region_mass=0.2, n_particles=64)
    note = precision_warning(weak, 3.0, RunKind.CONF2POSE)
    assert "--focus-iter 0" in note and "heterogeneity" not in note
    assert "heterogeneity followed by conformation to pose" in precision_warning(weak, 3.0, RunKind.PATCH)


def test_focus_precision_of_an_empty_region_reads_no_image(two_noise_levels, monkeypatch):
    """A focus mask holding no Gaussian of the start's GMM: no bound (None), and no image is read for it."""
    from types import SimpleNamespace

    import gmmcore.gmm.precision as precision
    from gmmcore.gmm.build import build_gmm
    from gmmcore.particles import HalfPair
    from gmmcore.refine.focused_run import focus_precision
    from gmmcore.refine.state import Band, RefinementState

    sim = two_noise_levels[0]
    table = read_star(sim["true_star"])
    m, apix = read_map(sim["true_map"])
    be = get_backend("tf")
    gmm, _ = build_gmm(m, apix, 6.0, seed=0, backend=be)
    start = RefinementState(0, Poses(sim["rotations"], sim["origins_A"]), HalfPair(m, m), 6.0, HalfPair(gmm, gmm))
    plan = SimpleNamespace(band_of=lambda state: Band(25.0, 6.0))

    def no_reading(*args, **kwargs):
        raise AssertionError("images read for an empty region")

    monkeypatch.setattr(precision, "iter_images", no_reading)
    assert focus_precision(table, start, np.zeros((sim["box"],) * 3, np.float32), plan, be) is None
    with pytest.raises(AssertionError, match="images read"):  # a region with Gaussians does read them
        focus_precision(table, start, np.ones((sim["box"],) * 3, np.float32), plan, be)
