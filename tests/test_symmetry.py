"""Point groups: orders, closure, RELION axis orientations, bad symbols."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gmmcore.errors import InputError
from gmmcore.symmetry import expand_rotations, symmetry_matrices


def _contains(G, M, tol=1e-6):
    return bool(np.any(np.abs(G - M).reshape(len(G), -1).max(axis=1) < tol))


def _rot(fold, axis):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return Rotation.from_rotvec(axis * 2 * np.pi / fold).as_matrix()


@pytest.mark.parametrize("sym,order", [("C1", 1), ("C2", 2), ("C7", 7), ("C12", 12), ("D1", 2), ("D2", 4),
                                       ("D6", 12), ("T", 12), ("O", 24), ("I", 60), ("i2", 60), ("c4", 4)])
def test_order_closure_and_proper_rotations(sym, order):
    G = symmetry_matrices(sym)
    assert G.shape == (order, 3, 3)
    np.testing.assert_allclose(G[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.einsum("kji,kjl->kil", G, G), np.broadcast_to(np.eye(3), G.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(G), 1.0, atol=1e-9)
    for a in G:
        for b in G:
            assert _contains(G, a @ b)
    # all distinct
    d = np.abs(G[:, None] - G[None]).reshape(order, order, -1).max(-1)
    assert (d + np.eye(order) > 1e-6).all()


def test_cn_about_z():
    G = symmetry_matrices("C5")
    np.testing.assert_allclose(G @ [0, 0, 1], np.broadcast_to([0, 0, 1], (5, 3)), atol=1e-12)
    assert _contains(G, _rot(5, (0, 0, 1)))


def test_dn_twofold_along_x():
    G = symmetry_matrices("D3")
    assert _contains(G, np.diag([1.0, -1.0, -1.0]))  # 2-fold about x
    assert _contains(G, _rot(3, (0, 0, 1)))
    assert not _contains(G, np.diag([-1.0, 1.0, -1.0]))  # not about y (D3 has no 2-fold on y)


def test_t_o_i_axes_in_relion_orientation():
    T = symmetry_matrices("T")
    assert _contains(T, _rot(3, (0, 0, 1))) and _contains(T, _rot(2, (0, 0.816496, 0.577350)))
    O = symmetry_matrices("O")
    assert _contains(O, _rot(4, (0, 0, 1))) and _contains(O, _rot(3, (1, 1, 1)))
    assert _contains(O, _rot(4, (1, 0, 0)))
    I = symmetry_matrices("I")
    assert _contains(I, _rot(2, (0, 0, 1)))  # I2: 2-fold on z
    assert _contains(I, _rot(5, (0.525731114, 0, 0.850650807)))
    assert _contains(I, _rot(3, (0, 0.356822076, 0.934172364)))
    assert not _contains(I, _rot(5, (0, 0, 1)))  # that would be I3
    # I2 has 2-folds on x, y and z
    assert _contains(I, np.diag([1.0, -1.0, -1.0])) and _contains(I, np.diag([-1.0, 1.0, -1.0]))


@pytest.mark.parametrize("bad", ["C0", "X3", "D", "I5", "", "C-2", "Oh", "C 2"])
def test_bad_symbol_is_input_error_naming_sym(bad):
    with pytest.raises(InputError) as e:
        symmetry_matrices(bad)
    assert e.value.field == "--sym"


def test_expand_rotations():
    A = Rotation.random(3, random_state=1).as_matrix()
    E = expand_rotations(A, "C3")
    assert E.shape == (3, 3, 3, 3)
    np.testing.assert_allclose(E[:, 0], A, atol=1e-12)
    np.testing.assert_allclose(E[1, 2], A[1] @ symmetry_matrices("C3")[2], atol=1e-12)


def test_symmetry_name_is_the_one_normaliser():
    import pytest

    from gmmcore.errors import InputError
    from gmmcore.symmetry import symmetry_name

    assert [symmetry_name(s) for s in ("c4 ", "d07", "t", "o", "i", "I2", "C1")] == ["C4", "D7", "T", "O", "I", "I2", "C1"]
    with pytest.raises(InputError) as e:
        symmetry_name("c0", field="--reimpose")
    assert e.value.field == "--reimpose"
