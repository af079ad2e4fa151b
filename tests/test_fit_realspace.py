"""The real-space GMM fit (gmmcore.gmm.realfit, ``fit_gmm(method="real")``, issue 20): the same
loss as the backend's Fourier-space fit at the same parameters, exact gradients (finite
differences), and a fit that lands on the same map agreement as the Fourier fit."""
import numpy as np
import pytest

from gmmcore.backend import get_backend
from gmmcore.errors import InputError
from gmmcore.gmm.build import _FitProblem, fit_gmm, seed_kmeans
from gmmcore.gmm.model import GMM
from gmmcore.gmm.realfit import RealSpaceFit
from gmmcore.gmm.render import render_map

BOX, APIX, RES = 40, 1.5, 4.5


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    n = 70
    truth = GMM(rng.normal(0, 7, (n, 3)), rng.uniform(0.5, 1.5, n), rng.uniform(1.3, 2.2, n))
    m = render_map(truth, BOX, APIX)
    m = m + rng.normal(0, 0.02 * m.std(), m.shape).astype(np.float32)
    c0 = truth.centers + rng.normal(0, 0.6, truth.centers.shape)
    u0 = np.float32(np.log(np.e - 1.0))
    p = [c0.astype(np.float32), (u0 + rng.normal(0, 0.1, n)).astype(np.float32),
         (u0 + rng.normal(0, 0.1, n)).astype(np.float32)]
    return m, c0, p, np.full(n, 0.3 * RES, np.float32), rng.uniform(0.8, 1.2, n).astype(np.float32)


def test_loss_and_gradient_equal_the_fourier_fit(problem):
    m, _, p, sig0, amp0 = problem
    prob = _FitProblem(m, APIX, RES, 25.0, 40_000_000)
    fourier = get_backend("tf").gmm_fit(prob, sig0, 0.1)
    real = RealSpaceFit(prob, sig0, 0.1)
    lf, fscf, gf = fourier.value_and_grad(p, amp0)
    lr, fscr, gr = real.value_and_grad(p, amp0)
    # rendered at a quarter of the band's resolution, cut at ≥ 4σ: equal to float32 rounding
    # (three data seeds: loss ≤ 3e-7 relative, FSC ≤ 5e-7, gradients ≤ 1.3e-5 of their largest entry;
    # rendered on the map's own 1.5 Å grid the loss differed by 4e-4 and the gradients by 2 %)
    assert abs(lr - lf) < 1e-5 * abs(lf)
    np.testing.assert_allclose(fscr, fscf, atol=1e-5)
    for a, b in zip(gr, gf):
        assert np.abs(a - b).max() < 2e-4 * np.abs(b).max()
    np.testing.assert_allclose(real.sums(p, amp0), fourier.sums(p, amp0), rtol=1e-4, atol=1e-6)


def test_gradient_is_exact(problem):
    m, _, p, sig0, amp0 = problem
    real = RealSpaceFit(_FitProblem(m, APIX, RES, 25.0, 40_000_000), sig0, 0.1)
    _, _, g = real.value_and_grad(p, amp0)
    eps = 1e-2  # the FFTs run in float32: smaller steps would difference their rounding (~1e-7 of the loss)
    for i, j in [(0, (4, 0)), (0, (4, 1)), (0, (9, 2)), (1, (5,)), (2, (11,))]:
        q = [x.astype(np.float64).copy() for x in p]
        q[i][j] += eps
        up, _, _ = real.value_and_grad(q, amp0)
        q[i][j] -= 2 * eps
        down, _, _ = real.value_and_grad(q, amp0)
        assert abs((up - down) / (2 * eps) - g[i][j]) < 2e-3 * abs(g[i][j]) + 1e-7


def test_real_fit_lands_where_the_fourier_fit_does(problem):
    m = problem[0]
    c = seed_kmeans(m, APIX, 50, seed=0)
    g_f, r_f = fit_gmm(m, APIX, c, RES, iterations=60)
    g_r, r_r = fit_gmm(m, APIX, c, RES, iterations=60, method="real")
    assert r_r["method"] == "real" and r_f["method"] == "fourier"
    assert r_r["loss"] < 0.5 * r_r["loss_start"]
    assert abs(r_r["fsc_mean"] - r_f["fsc_mean"]) < 0.01
    assert np.median(np.linalg.norm(g_r.centers - g_f.centers, axis=1)) < 0.1 * RES


def test_unknown_method_is_refused(problem):
    m = problem[0]
    with pytest.raises(InputError, match="fourier or real"):
        fit_gmm(m, APIX, seed_kmeans(m, APIX, 10, seed=0), RES, iterations=2, method="fft")
