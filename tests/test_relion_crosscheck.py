"""Independent reference: RELION 3.1's own programs read the star files we write.

`relion_reconstruct` (Debian's `relion` package; `.ci/run` installs it when it can) reconstructs
particles from a star written by `gmmcore import --no-phase-flip` (our writer, our CTF / Euler /
origin columns); its map must agree with our reconstruction of the same particles and with the
true map of the simulation.  A star whose angles are written in the transposed convention must not.
Skipped when RELION is not installed.
"""
import shutil
import subprocess

import numpy as np
import pytest

from gmmcore.cli import main as cli
from gmmcore.fourier import lowpass
from gmmcore.fsc import fsc, resolution_at
from gmmcore.geometry import matrix_to_euler
from gmmcore.io.maps import read_map
from gmmcore.io.star import read_star, write_star

pytestmark = pytest.mark.skipif(shutil.which("relion_reconstruct") is None,
                                reason="RELION (relion_reconstruct) not installed")


@pytest.fixture(scope="module")
def relion_data(tmp_path_factory):
    from gmmcore.simulate import simulate_dataset

    out = tmp_path_factory.mktemp("relion_xcheck")
    sim = simulate_dataset(out / "sim", n_particles=600, box=48, apix=2.0, snr=5.0, seed=11, show_progress=False)
    assert cli(["import", "--star", str(sim["true_star"]), "--no-phase-flip", "--out", str(out / "imp")]) == 0
    return sim, out


def _relion_half1(star, out_mrc, apix):
    subprocess.run(["relion_reconstruct", "--i", str(star), "--o", str(out_mrc), "--subset", "1", "--ctf",
                    "--angpix", str(apix)], check=True, capture_output=True, cwd=str(star.parent))
    return read_map(out_mrc)[0]


def _cc(a, b, apix, res=5.0):
    a, b = lowpass(a, apix, res), lowpass(b, apix, res)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _res_vs(a, b, apix):
    """Resolution (Å) where the FSC between two maps falls below 0.5."""
    freq, curve = fsc(a, b, apix)
    return resolution_at(freq, curve, 0.5)


def test_relion_reads_our_star_and_agrees(relion_data):
    sim, out = relion_data
    star = out / "imp" / "particles.star"
    rel = _relion_half1(star, out / "relion_half1.mrc", sim["apix"])
    assert cli(["reconstruct", "--particles", str(star), "--out", str(out / "ours")]) == 0
    ours = read_map(out / "ours" / "half1.mrc")[0]
    true = read_map(sim["true_map"])[0]
    cc_ours, cc_true = _cc(rel, ours, sim["apix"]), _cc(rel, true, sim["apix"])
    res_true = _res_vs(rel, true, sim["apix"])
    print(f"RELION vs ours {cc_ours:.4f}, RELION vs truth {cc_true:.4f}, FSC(RELION, truth) = 0.5 at {res_true:.2f} Å")
    assert cc_ours > 0.97
    assert cc_true > 0.95
    assert res_true < 7.0


def test_transposed_angles_disagree_with_relion(relion_data):
    """Negative control: the same particles with Aᵀ written as their rotation."""
    sim, out = relion_data
    table = read_star(out / "imp" / "particles.star")
    wrong = table.with_poses(np.swapaxes(table.rotation, 1, 2), table.origin)
    wrong.star_particles = wrong.star_particles.copy()
    star = out / "imp" / "transposed.star"
    write_star(wrong, star)
    assert np.allclose(read_star(star).euler(), matrix_to_euler(wrong.rotation), atol=1e-3)
    rel = _relion_half1(star, out / "relion_transposed.mrc", sim["apix"])
    true = read_map(sim["true_map"])[0]
    res = _res_vs(rel, true, sim["apix"])
    print(f"transposed angles: FSC(RELION, truth) = 0.5 at {res:.2f} Å")
    assert res > 10.0  # right convention: < 7 Å (4.4 Å measured)
