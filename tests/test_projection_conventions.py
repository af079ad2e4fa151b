"""Independent check of the projection conventions (RELION): I(p) = ∫ V(Aᵀp) dz.

The GMM projector works analytically in Fourier space; here we project the rendered map the slow,
obvious way (sample the map at Aᵀ(x, y, z) with scipy and sum along z) and demand that both agree,
and that the transposed rotation does not.  A second test places one Gaussian by hand.
"""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

from gmmcore.geometry import angular_distance, euler_to_matrix
from gmmcore.gmm.render import project_images, render_map
from gmmcore.gmm.model import GMM
from gmmcore.simulate import load_model, model_gmm


def relion_matrix(rot, tilt, psi):
    """RELION's Euler_angles2matrix, written out again (independently of gmmcore.geometry)."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    Rz = lambda t: np.array([[np.cos(t), np.sin(t), 0], [-np.sin(t), np.cos(t), 0], [0, 0, 1]])  # noqa: E731
    Ry = lambda t: np.array([[np.cos(t), 0, -np.sin(t)], [0, 1, 0], [np.sin(t), 0, np.cos(t)]])  # noqa: E731
    A = Rz(g) @ Ry(b) @ Rz(a)
    # RELION's closed form, element by element.
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    A2 = np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                   [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                   [sc, ss, cb]])
    assert np.allclose(A, A2)
    return A


def project_map_direct(vol, A, origin_px):
    """I(p) = Σ_z V(Aᵀ(p + origin)) with p = (x, y, z) in pixels from the box centre.

    The particle centre then sits at the box centre − origin (RELION's sign)."""
    n = vol.shape[0]
    c = n // 2
    z, y, x = np.meshgrid(np.arange(n) - c, np.arange(n) - c, np.arange(n) - c, indexing="ij")
    p = np.stack([x + origin_px[0], y + origin_px[1], z], axis=0).reshape(3, -1).astype(np.float64)
    r = A.T @ p  # (3, n³): x, y, z of the map sample
    coords = np.stack([r[2], r[1], r[0]]) + c  # map index order [z, y, x]
    samples = map_coordinates(vol, coords, order=3, mode="constant", cval=0.0).reshape(n, n, n)
    return samples.sum(axis=0)  # sum over z → (y, x)


def highpass(img, sigma_px=3.0):
    """Remove the low-resolution envelope (a compact protein's blob looks alike from most views)."""
    return img - gaussian_filter(img, sigma=sigma_px, mode="constant")


def ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def adk():
    mdl = load_model("builtin:adk-closed")  # the simulator's default atoms (σ ≈ 1.35 Å)
    gmm = model_gmm(mdl)
    box, apix = 48, 1.5
    vol = render_map(gmm, box, apix)
    return gmm, vol, box, apix


POSES = [  # rot, tilt, psi (deg), origin (px)
    (30.0, 60.0, -100.0, (0.0, 0.0)),
    (-140.0, 110.0, 45.0, (2.0, -1.5)),
    (75.0, 25.0, 160.0, (-1.0, 3.0)),
    (120.0, 130.0, -60.0, (1.5, 0.5)),
]


@pytest.mark.parametrize("rot,tilt,psi,origin_px", POSES)
def test_gmm_projection_matches_map_projection(adk, rot, tilt, psi, origin_px):
    gmm, vol, box, apix = adk
    A = relion_matrix(rot, tilt, psi)
    assert np.allclose(A, euler_to_matrix(rot, tilt, psi))
    origin_A = np.asarray(origin_px) * apix
    direct = project_map_direct(vol, A, np.asarray(origin_px))
    proj = project_images(gmm, A[None], origin_A[None], apix, box)[0]
    proj_t = project_images(gmm, A.T[None], origin_A[None], apix, box)[0]
    assert angular_distance(A, A.T) > 60  # the poses are chosen so that A and Aᵀ differ a lot
    assert ncc(direct, proj) > 0.99
    # ADK is compact, so whole images of any two views correlate (≈ 0.85 for Aᵀ): compare the
    # detail (image minus a 3-pixel Gaussian blur), where the right convention still gives > 0.99
    # and the wrong one < 0.6 (≈ 0.1–0.3).
    good, bad = ncc(highpass(direct), highpass(proj)), ncc(highpass(direct), highpass(proj_t))
    assert good > 0.99, (good, bad)
    assert bad < 0.6, (good, bad)
    assert ncc(direct, proj_t) < ncc(direct, proj) - 0.02
    # Mass is conserved: projection of mass per voxel = mass per pixel.
    assert proj.sum() == pytest.approx(vol.sum(), rel=1e-3)


def test_origin_sign(adk):
    """A positive origin moves the particle towards negative x / y (centre − origin)."""
    gmm, vol, box, apix = adk
    A = relion_matrix(10.0, 40.0, 70.0)
    p0 = project_images(gmm, A[None], np.zeros((1, 2)), apix, box)[0]
    p1 = project_images(gmm, A[None], np.array([[3.0 * apix, -2.0 * apix]]), apix, box)[0]
    assert ncc(np.roll(p1, (-2, 3), axis=(0, 1)), p0) > 0.999  # undo: shift by +origin (x +3, y −2)


def _centroid_A(img, apix):
    n = img.shape[0]
    y, x = np.mgrid[:n, :n] - n // 2
    m = img.sum()
    return np.array([(img * x).sum() / m, (img * y).sum() / m]) * apix


@pytest.mark.parametrize("center,angles,expected_xy", [
    # rot = 90: A = Rz(90) in RELION's form [[c, s, 0], [−s, c, 0], [0, 0, 1]] → (5,0,0) ↦ (0, −5)
    ((5.0, 0.0, 0.0), (90.0, 0.0, 0.0), (0.0, -5.0)),
    # tilt = 90: A = Ry(90) = [[c, 0, −s], [0, 1, 0], [s, 0, c]] → (0,0,5) ↦ (−5, 0)
    ((0.0, 0.0, 5.0), (0.0, 90.0, 0.0), (-5.0, 0.0)),
    # psi = 90 after rot = 90: Rz(90)·Rz(90) = Rz(180) → (5,0,0) ↦ (−5, 0)
    ((5.0, 0.0, 0.0), (90.0, 0.0, 90.0), (-5.0, 0.0)),
    # generic pose: compare with the hand-built matrix
    ((3.0, -4.0, 6.0), (30.0, 50.0, -20.0), None),
])
def test_single_gaussian_lands_where_relion_predicts(center, angles, expected_xy):
    box, apix = 32, 1.0
    c = np.asarray(center)
    A = relion_matrix(*angles)
    predicted = (A @ c)[:2]
    if expected_xy is not None:
        assert np.allclose(predicted, expected_xy, atol=1e-9)
    gmm = GMM(c[None], [1.0], [2.0])
    for origin in (np.zeros(2), np.array([1.0, -2.0])):
        img = project_images(gmm, A[None], origin[None], apix, box)[0]
        assert img.sum() == pytest.approx(1.0, rel=1e-3)  # mass per pixel
        assert np.allclose(_centroid_A(img, apix), predicted - origin, atol=0.02)
        # ... and the brightest pixel is where the centre rounds to
        iy, ix = np.unravel_index(np.argmax(img), img.shape)
        exp = np.round((predicted - origin) / apix).astype(int) + box // 2
        assert (ix, iy) == (exp[0], exp[1])


def test_map_axes_order():
    """render_map is indexed [z, y, x]: a Gaussian at (x, y, z) = (6, −4, 2) Å peaks at [c+2, c−4, c+6]."""
    box, apix = 24, 1.0
    vol = render_map(GMM(np.array([[6.0, -4.0, 2.0]]), [1.0], [1.5]), box, apix)
    c = box // 2
    assert np.unravel_index(np.argmax(vol), vol.shape) == (c + 2, c - 4, c + 6)
    assert vol.sum() == pytest.approx(1.0, rel=1e-3)
