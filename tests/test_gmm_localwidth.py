"""Local-resolution-aware GMM widths (gmmcore.gmm.localwidth) against the formula."""
import numpy as np

from gmmcore.gmm.localwidth import KAPPA, local_blur_A, widen_to_local_resolution
from gmmcore.gmm.model import GMM


def test_blur_follows_the_local_resolution_ratio():
    n, apix, band = 32, 1.5, 4.0
    local = np.zeros((n, n, n), np.float32)
    local[:] = 3.0  # most of the particle
    local[:, :, n // 2 + 4:] = 6.0  # x >= 6 Å: twice as coarse
    # three centres at 3 Å (the median over the centres), two at 6 Å, one outside the box (unknown)
    centers = np.array([[-8.0, 0, 0], [-6.0, 2, 0], [-4.0, 0, 3], [8.0, 0, 0], [8.0, 0, 0], [40.0, 0, 0]],
                       np.float32)
    gmm = GMM(centers, np.ones(6, np.float32), np.array([1.0, 1.0, 1.0, 1.0, 2.0, 1.0], np.float32))
    blur = local_blur_A(local, centers, apix, band)
    expect = KAPPA * band * np.sqrt(4.0 - 1.0)  # (6/3)² − 1
    np.testing.assert_allclose(blur, [0.0, 0.0, 0.0, expect, expect, 0.0], rtol=1e-6, atol=1e-12)
    out = widen_to_local_resolution(gmm, local, apix, band)
    np.testing.assert_allclose(out.sigmas, np.sqrt(gmm.sigmas.astype(float) ** 2 + blur ** 2), rtol=1e-6)
    np.testing.assert_array_equal(out.centers, gmm.centers)
    np.testing.assert_array_equal(out.amplitudes, gmm.amplitudes)
    assert out.meta["local_res"]["widened"] == 2
    np.testing.assert_array_equal(gmm.sigmas, [1.0, 1.0, 1.0, 1.0, 2.0, 1.0])  # the input is not changed
    assert abs(KAPPA - 0.1874) < 1e-3  # a Gaussian of σ = κ·r has transform 1/2 at 1/r
    assert abs(np.exp(-2 * np.pi ** 2 * (KAPPA * 5.0) ** 2 / 5.0 ** 2) - 0.5) < 1e-12


def test_no_local_resolution_no_change():
    gmm = GMM(np.zeros((2, 3), np.float32), np.ones(2, np.float32), np.ones(2, np.float32))
    out = widen_to_local_resolution(gmm, np.zeros((16, 16, 16)), 1.0, 4.0)
    np.testing.assert_array_equal(out.sigmas, gmm.sigmas)
