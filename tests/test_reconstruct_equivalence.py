"""The reconstructor's insertion against the reference kept in ``benchmarks/reference_reconstruct.py``
(the straightforward form: CTF on the whole padded grid, then ``np.add.at`` per trilinear corner
into separate complex data and weight arrays).  The NumPy path's sums must be the same bit for bit,
the compiled kernel's the same up to float64 rounding (the order of additions, the centring phase
as per-axis factors), with the same map (issue 20: faster, results unchanged)."""
import numpy as np
import pytest

from benchmarks.reference_reconstruct import reference_sums
from gmmcore.geometry import random_rotations
from gmmcore.particles import CTFParams
from gmmcore.reconstruct import Reconstructor, scatter_add


def _particles(k, box, rng, bfactor=0.0):
    du = np.repeat(rng.uniform(8000, 20000, k), 2)[:k]  # pairs of images share their CTF (a micrograph)
    pair = lambda a: np.repeat(a, 2)[:k]  # noqa: E731
    ctf = CTFParams(du, du - pair(rng.uniform(-600, 600, k)), pair(rng.uniform(-90, 90, k)), np.full(k, 300.0),
                    np.full(k, 2.7), np.full(k, 0.1), pair(rng.uniform(0, 30, k)), np.full(k, bfactor))
    images = rng.standard_normal((k, box, box)).astype(np.float32)
    return images, random_rotations(k, rng), rng.uniform(-3, 3, (k, 2)), ctf


# (box, symmetry, phase-flipped, images): odd box, Cn and D7, boxes 64 and 160 (the bricked layout
# across many bricks), raw and phase-flipped.
CASES = [(24, "C1", False, 40), (25, "C1", True, 40), (20, "C3", False, 40), (21, "D7", False, 12),
         (64, "C1", False, 10), (160, "C1", False, 3)]


@pytest.mark.parametrize("box,sym,phase_flipped,k", CASES)
def test_insertion_matches_reference_bit_for_bit(box, sym, phase_flipped, k, monkeypatch):
    """The NumPy path (no numba) adds in the reference's order: the same sums, bit for bit."""
    import gmmcore.reconstruct as reconstruct

    monkeypatch.setattr(reconstruct, "compiled_insertion", lambda: None)
    rng = np.random.default_rng(box)
    images, rot, org, ctf = _particles(k, box, rng)
    rec = Reconstructor(box, 1.3, sym=sym)
    rec.insert(images, rot, org, ctf, phase_flipped)
    data, weight = reference_sums(rec, images, rot, org, ctf, phase_flipped)
    assert np.array_equal(rec.sums()[0], data)
    assert np.array_equal(rec.sums()[1], weight)


@pytest.mark.parametrize("box,sym,phase_flipped,k", CASES + [(24, "C1", False, -1), (25, "D7", True, -1)])
def test_compiled_insertion_matches_reference(box, sym, phase_flipped, k, monkeypatch):
    """The compiled kernel adds the same terms, a sample's operators and 8 corners together, the
    centring phase as a product of per-axis factors, |CTF| evaluated inside: sums equal to the
    reference's up to float64 rounding, and the same map.  k = −1: 30 images with a B-factor (|CTF|
    from the NumPy formula, given to the kernel)."""
    pytest.importorskip("numba")
    import gmmcore.reconstruct as reconstruct
    from gmmcore.insertion import kernel

    assert kernel() is not None
    rng = np.random.default_rng(box)
    images, rot, org, ctf = _particles(30 if k < 0 else k, box, rng, bfactor=40.0 if k < 0 else 0.0)
    rec = Reconstructor(box, 1.3, sym=sym)
    rec.insert(images, rot, org, ctf, phase_flipped)
    data, weight = reference_sums(rec, images, rot, org, ctf, phase_flipped)
    assert np.abs(rec.sums()[0] - data).max() <= 1e-14 * np.abs(data).max()
    assert np.abs(rec.sums()[1] - weight).max() <= 1e-14 * weight.max()
    assert not np.array_equal(rec.sums()[1], 0 * weight)
    monkeypatch.setattr(reconstruct, "compiled_insertion", lambda: None)
    plain = Reconstructor(box, 1.3, sym=sym)
    plain.insert(images, rot, org, ctf, phase_flipped)
    a, b = rec.finish(), plain.finish()
    assert np.abs(a - b).max() <= 4 * np.finfo(np.float32).eps * np.abs(b).max()


def test_scatter_add_accumulates_repeated_indices_in_order():
    acc = np.zeros((5, 3))
    idx = np.array([1, 3, 1, 1], np.int64)
    rec = np.arange(12, dtype=np.float64).reshape(4, 3)
    scale = np.array([0.5, 2.0, 1.0, 0.1])
    scatter_add(acc, idx, rec, scale)
    ref = np.zeros((5, 3))
    for j in range(3):
        np.add.at(ref[:, j], idx, rec[:, j] * scale)
    assert np.array_equal(acc, ref)


@pytest.mark.parametrize("P,n", [(48, 24), (50, 25), (64, 33), (40, 40)])
def test_cropped_inverse_transform_is_the_full_one_cropped(P, n):
    import scipy.fft as sfft

    from gmmcore.reconstruct import cropped_irfftn

    rng = np.random.default_rng(P + n)
    F = rng.standard_normal((P, P, P // 2 + 1)) + 1j * rng.standard_normal((P, P, P // 2 + 1))
    o = P // 2 - n // 2
    full = sfft.fftshift(sfft.irfftn(F, s=(P, P, P)))[o:o + n, o:o + n, o:o + n]
    assert np.array_equal(cropped_irfftn(F, P, n), full)


@pytest.mark.parametrize("box", [16, 17, 24])
def test_padded_transform_is_scipys_rfft2(box):
    import scipy.fft as sfft

    rec = Reconstructor(box, 1.0)
    P, n = rec.P, box
    rng = np.random.default_rng(box)
    images = rng.standard_normal((3, n, n)).astype(np.float32)
    origins = np.zeros((3, 2))
    padded = np.zeros((3, P, P), np.float32)
    o = P // 2 - n // 2
    padded[:, o:o + n, o:o + n] = images
    ref = sfft.rfft2(sfft.ifftshift(padded, axes=(-2, -1))).reshape(3, -1)[:, rec._sel].astype(np.complex128)
    assert np.array_equal(rec._centred(rec._transforms(images), origins), ref * np.exp(1j * np.zeros_like(ref.real)))


def test_compiled_insertion_without_ctf_and_thread_count(monkeypatch):
    """No CTF (c = 1): the compiled sums are the reference's; one or two threads, the same sums."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(5)
    images, rot, org, _ = _particles(20, 24, rng)
    sums = []
    for threads in ("1", "2"):
        monkeypatch.setenv("GMMCORE_THREADS", threads)
        rec = Reconstructor(24, 1.3, sym="C2")
        rec.insert(images, rot, org, None, True)
        sums.append(rec.sums())
    data, weight = reference_sums(rec, images, rot, org, None, True)
    assert np.abs(sums[0][0] - data).max() <= 1e-14 * np.abs(data).max()
    assert np.abs(sums[0][1] - weight).max() <= 1e-14 * weight.max()
    assert all(np.array_equal(a, b) for a, b in zip(sums[0], sums[1]))


@pytest.mark.parametrize("shape,b", [((49, 49, 26), 8), ((9, 5, 7), 4), ((6, 4, 3), 1)])
def test_bricks_layout_round_trip(shape, b):
    """Bricks: rows tz[z] + ty[y] + tx[x] are distinct and in range; grid() reads back the records
    of each voxel, add() writes a row-major grid into the bricked rows."""
    from gmmcore.reconstruct import Bricks

    lay = Bricks(shape, b)
    rows = lay.tz[:, None, None] + lay.ty[None, :, None] + lay.tx[None, None, :]
    assert np.unique(rows).size == rows.size and rows.min() >= 0 and rows.max() < lay.size
    g = np.random.default_rng(1).standard_normal(shape + (3,))
    acc = np.zeros((lay.size, 3))
    lay.add(acc, g)
    assert np.array_equal(acc[rows], g)
    assert np.array_equal(lay.grid(acc), g)
    assert np.count_nonzero(acc) == g.size
