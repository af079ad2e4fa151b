"""Importing what users have (issue 7): metadata without stacks, missing CTF constants, stacks kept
elsewhere, RELION stacks without a map ID; silent wrong results refused (names without index@, an
image in both halves, non-integer optics groups, voltage 0, complex stacks, absurd defoci); unusable
half splits warned about and redone by --new-split.

Star / .cs files are written as text / NumPy by the tests (tests/helpers.py
helpers), independently of gmmcore's writers.
"""
from __future__ import annotations

import json
import warnings

import mrcfile
import numpy as np
import pytest

from gmmcore.errors import InputError
from gmmcore.io.star import read_star, read_star_blocks
from gmmcore.io.stacks import iter_images
from gmmcore.particles import MIN_HALF_FRACTION, assign_split, check_split
from tests.helpers import assert_one_error, cs_records, run_verb, save_cs
from tests.helpers import random_particles, star30_text, star31_text, write_stacks


def run(capsys, verb, *args):
    return run_verb(capsys, verb, *args)[:2]


def one_error(rc, err, verb, *must):
    return assert_one_error(rc, err, *must, verb=verb)


def drop_column(text: str, label: str) -> str:
    """Remove ``label`` (header line and its column) from the one loop of a RELION 3.0 star text."""
    lines = text.split("\n")
    heads = [i for i, ln in enumerate(lines) if ln.startswith("_")]
    k = [lines[i].split()[0][1:] for i in heads].index(label)
    out = []
    for i, ln in enumerate(lines):
        if i == heads[k]:
            continue
        if i > heads[-1] and ln.strip():
            cells = ln.split("\t")
            del cells[k]
            ln = "\t".join(cells)
        out.append(ln)
    return "\n".join(out)


def set_cell(text: str, label: str, row: int, value: str) -> str:
    """Set ``label`` of particle ``row`` (0-based) in the data_particles loop of a star text."""
    lines = text.split("\n")
    start = lines.index("data_particles")
    heads = [i for i in range(start, len(lines)) if lines[i].startswith("_")]
    k = [lines[i].split()[0][1:] for i in heads].index(label)
    i = heads[-1] + 1 + row
    cells = lines[i].split("\t")
    cells[k] = value
    lines[i] = "\t".join(cells)
    return "\n".join(lines)


def balanced(P):
    P["half"] = np.arange(P["n"]) % 2 + 1
    return P


# ------------------------------------------------------------------------------------------------
# --metadata-only without the stacks
# ------------------------------------------------------------------------------------------------
def test_metadata_only_without_stacks_same_metadata(tmp_path, capsys):
    P = balanced(random_particles(n=10, seed=60, n_stack=3))
    star = tmp_path / "with" / "run_data.star"
    star.parent.mkdir()
    write_stacks(star.parent, P)
    star.write_text(star31_text(P, groups=[(1, "g1", 1.5), (2, "g2", 1.5)]))
    bare = tmp_path / "without" / "run_data.star"  # the same file, its stacks not on this machine
    bare.parent.mkdir()
    bare.write_text(star.read_text())

    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "a")
    assert rc == 0 and "warning" not in err, err
    rc, err = run(capsys, "import", "--star", bare, "--metadata-only", "--out", tmp_path / "b")
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "3 stacks not found" in warn[0] and "stack0.mrcs" in warn[0], err

    a, _ = read_star_blocks(tmp_path / "a" / "particles.star")
    b, _ = read_star_blocks(tmp_path / "b" / "particles.star")
    assert a["optics"].equals(b["optics"])
    cols = [c for c in a["particles"].columns if c != "rlnImageName"]
    assert a["particles"][cols].equals(b["particles"][cols])
    # found: absolute; not found: as given
    given = [f"{P['index'][i]:06d}@stack{P['stack'][i]}.mrcs" for i in range(P["n"])]
    assert b["particles"]["rlnImageName"].tolist() == given
    assert a["particles"]["rlnImageName"].tolist() == [
        f"{g.split('@')[0]}@{star.parent.resolve() / g.split('@')[1]}" for g in given]
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sa["stacks_missing"] == 0 and sb["stacks_missing"] == 3
    assert sb["warnings"] == [w.split("warning: ", 1)[1] for w in warn]
    # without --metadata-only the same file is refused, naming the first missing stack and the folders
    rc, err = run(capsys, "import", "--star", bare, "--out", tmp_path / "c")
    one_error(rc, err, "import", bare, "rlnImageName", "stack0.mrcs", "(and 2 more of 3 stacks)",
              str(bare.parent.resolve()), "the folders above it", "--stack-root")
    assert not (tmp_path / "c").exists()


def test_metadata_only_relion30_without_stacks(tmp_path, capsys):
    """RELION 3.0 gives the image size only through the stacks: unknown, left out of the optics."""
    P = balanced(random_particles(n=6, seed=61))
    star = tmp_path / "r30.star"
    star.write_text(star30_text(P))
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "o")
    assert rc == 0, err
    blocks, _ = read_star_blocks(tmp_path / "o" / "particles.star")
    assert "rlnImageSize" not in blocks["optics"].columns
    assert blocks["optics"]["rlnImagePixelSize"].tolist() == [pytest.approx(1.5)]
    # with the stacks there, the size comes from their headers
    write_stacks(tmp_path, P)
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "p")
    assert rc == 0, err
    blocks, _ = read_star_blocks(tmp_path / "p" / "particles.star")
    assert blocks["optics"]["rlnImageSize"].tolist() == [16]


def test_metadata_only_cs_without_stacks(tmp_path, capsys):
    P = balanced(random_particles(n=7, seed=62, n_stack=2))
    cs = save_cs(tmp_path / "P3_J20_particles.cs", cs_records(P))
    rc, err = run(capsys, "import", "--cs", cs, "--metadata-only", "--out", tmp_path / "o")
    assert rc == 0, err
    assert "2 stacks not found" in err
    t = read_star(tmp_path / "o" / "particles.star", need_stacks=False)
    assert sorted(set(n.split("@")[1] for n in t.image_name)) == ["J12/extract/stack0.mrcs",
                                                                  "J12/extract/stack1.mrcs"]
    np.testing.assert_allclose(t.ctf.defocus_u, P["du"], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# missing CTF constants
# ------------------------------------------------------------------------------------------------
def test_relion30_without_amplitude_contrast_uses_relion_default(tmp_path, capsys):
    P = balanced(random_particles(n=6, seed=63))
    write_stacks(tmp_path, P)
    star = tmp_path / "relion306.star"
    star.write_text(drop_column(star30_text(P), "rlnAmplitudeContrast"))
    out = tmp_path / "o"
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", out)
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1, err
    assert str(star) in warn[0] and "rlnAmplitudeContrast" in warn[0] and "0.1" in warn[0]
    t = read_star(out / "particles.star")
    np.testing.assert_allclose(t.ctf.amp_contrast, 0.1)
    s = json.loads((out / "summary.json").read_text())
    assert len(s["warnings"]) == 1 and "rlnAmplitudeContrast" in s["warnings"][0]
    # an explicit value wins, and no warning
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--amp-contrast", "0.07", "--out",
                  tmp_path / "o2")
    assert rc == 0 and "warning" not in err, err
    np.testing.assert_allclose(read_star(tmp_path / "o2" / "particles.star").ctf.amp_contrast, 0.07)


@pytest.mark.parametrize("label, flag, value", [("rlnVoltage", "--voltage", 200.0),
                                                ("rlnSphericalAberration", "--cs-mm", 1.4)])
def test_missing_voltage_or_cs_is_an_error_or_a_flag(tmp_path, capsys, label, flag, value):
    P = balanced(random_particles(n=5, seed=64))
    write_stacks(tmp_path, P)
    star = tmp_path / "in.star"
    star.write_text(drop_column(star30_text(P), label))
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "o")
    one_error(rc, err, "import", star, label, f"give it with {flag}")
    assert not (tmp_path / "o").exists()
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", flag, value, "--out", tmp_path / "o")
    assert rc == 0, err
    t = read_star(tmp_path / "o" / "particles.star")
    got = t.ctf.voltage if label == "rlnVoltage" else t.ctf.cs
    np.testing.assert_allclose(got, value)
    # a flag that contradicts the file is refused
    full = tmp_path / "full.star"
    full.write_text(star30_text(P))
    rc, err = run(capsys, "import", "--star", full, "--metadata-only", flag, value, "--out", tmp_path / "x")
    one_error(rc, err, "import", full, label, flag)


# ------------------------------------------------------------------------------------------------
# stacks kept elsewhere
# ------------------------------------------------------------------------------------------------
def test_stacks_found_in_relion_project_and_after_a_move(tmp_path, capsys, monkeypatch):
    """Names relative to the RELION project (Extract/job012/...), the star in Refine3D/job042/, run
    from elsewhere; then the same names as absolute paths of another machine."""
    P = balanced(random_particles(n=8, seed=65, n_stack=2))
    proj = tmp_path / "proj"
    ext = proj / "Extract" / "job012" / "Movies"
    ext.mkdir(parents=True)
    imgs = write_stacks(ext, P)
    job = proj / "Refine3D" / "job042"
    job.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for k, prefix in enumerate(["Extract/job012/Movies/", "/old/cluster/disk/proj/Extract/job012/Movies/"]):
        star = job / f"run_data{k}.star"
        star.write_text(star31_text(P, prefix=prefix))
        t = read_star(star)
        for rows, block in iter_images(t, chunk=3):
            np.testing.assert_array_equal(block, imgs[rows])
        rc, err = run(capsys, "import", "--star", star, "--out", tmp_path / f"imp{k}")
        assert rc == 0, err


def test_map_id_absent_read_quietly_present_validated(tmp_path, caplog):
    P = random_particles(n=4, seed=66)
    imgs = write_stacks(tmp_path, P)
    f = tmp_path / "stack0.mrcs"
    raw = bytearray(f.read_bytes())
    assert raw[208:211] == b"MAP"
    raw[208:216] = bytes(8)  # no map ID, no machine stamp: as older RELION stacks
    f.write_bytes(bytes(raw))
    star = tmp_path / "p.star"
    star.write_text(star31_text(P))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = read_star(star)
        (rows, block), = list(iter_images(t))
    assert not [w for w in caught if "Map ID" in str(w.message)], [str(w.message) for w in caught]
    np.testing.assert_array_equal(block, imgs[rows])
    # a truncated file is refused whether or not it has a map ID
    f.write_bytes(bytes(raw[:-100]))
    with pytest.raises(InputError, match="not a readable MRC stack"):
        list(iter_images(read_star(star)))
    raw[208:212] = b"MAP "
    raw[212:216] = bytes([0x44, 0x44, 0, 0])
    f.write_bytes(bytes(raw[:-100]))
    with pytest.raises(InputError, match="not a readable MRC stack"):
        list(iter_images(read_star(star)))


# ------------------------------------------------------------------------------------------------
# silent wrong results refused
# ------------------------------------------------------------------------------------------------
def test_names_without_index_refused(tmp_path, capsys):
    P = balanced(random_particles(n=4, seed=67))
    write_stacks(tmp_path, P)
    star = tmp_path / "in.star"
    text = star31_text(P)
    for i in range(P["n"]):
        text = text.replace(f"{P['index'][i]:06d}@stack0.mrcs", "stack0.mrcs", 1)
    star.write_text(text)
    rc, err = run(capsys, "import", "--star", star, "--out", tmp_path / "o")
    one_error(rc, err, "import", star, "rlnImageName", "4 particles name 'stack0.mrcs' without an image index")
    # one particle naming a whole stack of several images: refused when read
    one = dict(P, n=1, rot=P["rot"][:1], tilt=P["tilt"][:1], psi=P["psi"][:1], origin_A=P["origin_A"][:1],
               du=P["du"][:1], dv=P["dv"][:1], dang=P["dang"][:1], half=P["half"][:1], extra=P["extra"][:1],
               stack=P["stack"][:1], index=P["index"][:1])
    star.write_text(star31_text(one).replace("000001@stack0.mrcs", "stack0.mrcs"))
    with pytest.raises(InputError, match="without an image index"):
        list(iter_images(read_star(star)))


def test_single_image_files_without_index_are_fine(tmp_path):
    P = balanced(random_particles(n=3, seed=68, n_stack=3))
    imgs = write_stacks(tmp_path, P)  # one image per file
    star = tmp_path / "in.star"
    text = star31_text(P)
    for s in range(3):
        text = text.replace(f"000001@stack{s}.mrcs", f"stack{s}.mrcs")
    star.write_text(text)
    t = read_star(star)
    for rows, block in iter_images(t):
        np.testing.assert_array_equal(block, imgs[rows])


def _dup_star(tmp_path, halves):
    """Six particles of which rows 1 and 4 name the same image."""
    P = random_particles(n=6, seed=69)
    P["half"] = np.asarray(halves)
    P["index"] = np.array([1, 2, 3, 4, 2, 5])
    P["stack"] = np.zeros(6, int)
    write_stacks(tmp_path, dict(P, n=5, index=np.arange(1, 6), stack=np.zeros(5, int)))
    star = tmp_path / "dup.star"
    star.write_text(star31_text(P))
    return star


def test_same_image_in_both_halves_refused(tmp_path, capsys):
    """The gold-standard guarantee: an image may not be in both half sets (its FSC would be inflated)."""
    star = _dup_star(tmp_path, [1, 2, 1, 2, 1, 2])
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "o")
    one_error(rc, err, "import", star, "rlnRandomSubset", "000002@stack0.mrcs", "both half sets", "rows 2 and 5")
    with pytest.raises(InputError, match="both half sets"):
        check_split(read_star(star))
    # --new-split makes a split that keeps each image in one half
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--new-split", "--out", tmp_path / "o")
    assert rc == 0, err
    t = read_star(tmp_path / "o" / "particles.star")
    assert t.half[1] == t.half[4]
    check_split(t)
    # the same image twice in one half (e.g. symmetry expansion) is allowed
    ok = _dup_star(tmp_path / "", [1, 2, 1, 2, 2, 1])
    check_split(read_star(ok))


def test_fractional_optics_group_refused(tmp_path, capsys):
    P = balanced(random_particles(n=4, seed=70))
    star = tmp_path / "in.star"
    star.write_text(set_cell(star31_text(P), "rlnOpticsGroup", 2, "1.7"))
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "o")
    one_error(rc, err, "import", star, "rlnOpticsGroup", "value 1.7 in row 3 is not a whole number")


@pytest.mark.parametrize("edit, field, words", [
    (("\t1\t0.5\t300.0", "\t1.7\t0.5\t300.0"), "rlnOpticsGroup", "1.7"),
    (("\t0.5\t300.0\t", "\t0.5\t0\t"), "rlnVoltage", "1–1000 kV"),
    (("\t0.5\t300.0\t2.7\t0.07", "\t0.5\t300.0\t2.7\t1.5"), "rlnAmplitudeContrast", "[0, 1)"),
])
def test_nonsense_optics_values_refused(tmp_path, capsys, edit, field, words):
    P = balanced(random_particles(n=4, seed=70))
    star = tmp_path / "in.star"
    text = star31_text(P)
    assert edit[0] in text
    star.write_text(text.replace(edit[0], edit[1], 1))
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "o")
    one_error(rc, err, "import", star, field, words)


def test_defocus_outside_bounds_refused(tmp_path, capsys):
    P = balanced(random_particles(n=4, seed=71))
    P["du"][2] = 1e9  # 10 cm
    star = tmp_path / "in.star"
    star.write_text(star31_text(P))
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "o")
    one_error(rc, err, "import", star, "rlnDefocusU", "row 3", "200,000 Å")
    P = balanced(random_particles(n=4, seed=71))
    rec = cs_records(P)
    rec["ctf/df2_A"][1] = -3e5
    cs = save_cs(tmp_path / "p.cs", rec)
    rc, err = run(capsys, "import", "--cs", cs, "--metadata-only", "--out", tmp_path / "o")
    one_error(rc, err, "import", cs, "ctf/df2_A", "row 2")


def test_complex_stack_refused(tmp_path, capsys):
    P = balanced(random_particles(n=3, seed=72))
    with mrcfile.new(str(tmp_path / "stack0.mrcs")) as m:
        m.set_data((np.ones((3, 16, 16)) + 1j).astype(np.complex64))
        m.set_image_stack()
    star = tmp_path / "in.star"
    star.write_text(star31_text(P))
    rc, err = run(capsys, "import", "--star", star, "--out", tmp_path / "o")
    one_error(rc, err, "import", "stack0.mrcs", "complex-valued", "mode 4")


def test_duplicate_label_one_line(tmp_path, capsys):
    P = balanced(random_particles(n=3, seed=73))
    star = tmp_path / "in.star"
    star.write_text(star31_text(P).replace("_rlnMyExtraColumn #13", "_rlnAngleTilt #13"))
    rc, err = run(capsys, "import", "--star", star, "--metadata-only", "--out", tmp_path / "o")
    one_error(rc, err, "import", star, "_rlnAngleTilt appears twice", "data_particles")


# ------------------------------------------------------------------------------------------------
# half sets: empty or lopsided = no usable split
# ------------------------------------------------------------------------------------------------
def test_one_half_split_warned_then_redone_by_new_split(tmp_path, capsys):
    P = random_particles(n=20, seed=74)
    P["half"] = np.ones(20, int)  # a real RELION 3.1 file had every particle in half 1
    write_stacks(tmp_path, P)
    star = tmp_path / "in.star"
    star.write_text(star31_text(P))
    out = tmp_path / "kept"
    rc, err = run(capsys, "import", "--star", star, "--out", out)
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "no particles in half set 2" in warn[0] and "--new-split" in warn[0], err
    s = json.loads((out / "summary.json").read_text())
    assert s["split"] == "input" and s["per_half"] == {"1": 20, "2": 0} and len(s["warnings"]) == 1
    # reconstruct refuses it, suggesting what reconstruct can do (it has no --new-split)
    rc, err = run(capsys, "reconstruct", "--particles", out / "particles.star", "--out", tmp_path / "rec")
    line = one_error(rc, err, "reconstruct", "no particles in half set 2", "gmmcore import --new-split")
    assert "use --new-split" not in line
    # --new-split redoes it: balanced, logged, recorded
    out2 = tmp_path / "redone"
    rc, err = run(capsys, "import", "--star", star, "--new-split", "--out", out2)
    assert rc == 0, err
    assert "no particles in half set 2 (all 20 in half set 1): made a new random split (seed" in err
    s = json.loads((out2 / "summary.json").read_text())
    assert s["split"] == "new-random" and s["per_half"] == {"1": 10, "2": 10}
    assert s["split_note"].startswith("no particles in half set 2")
    check_split(read_star(out2 / "particles.star"))


def test_lopsided_split_threshold(tmp_path):
    P = random_particles(n=40, seed=75)
    star = tmp_path / "in.star"
    write_stacks(tmp_path, P)
    for k_small, usable in ((3, False), (4, True)):  # 3/40 = 7.5 % < 10 % <= 4/40
        P["half"] = np.where(np.arange(40) < k_small, 2, 1)
        star.write_text(star31_text(P))
        t = read_star(star)
        if usable:
            assert check_split(t)[2].size == k_small
            assert assign_split(t, True, seed=1) == "input"  # a usable split is kept even with --new-split
        else:
            with pytest.raises(InputError, match=r"lopsided .* half set 2 holds 3 of 40 .*below 10%"):
                check_split(t)
            assert assign_split(t, True, seed=1) == "new-random"
            assert sorted(np.bincount(t.half)[1:].tolist()) == [20, 20]
            assert "lopsided" in t.meta["split_note"]
    assert MIN_HALF_FRACTION == 0.10


def test_refine_new_split_redoes_one_half_split(sim_small, tmp_path, capsys, monkeypatch):
    """refine: a one-half split is refused (naming --new-split) before anything is written;
    with --new-split the driver replaces it by a balanced split and logs why.  (The run is stopped
    where iteration 0 would start: test_refine_cli runs a --new-split refinement end to end.)"""
    import gmmcore.refine.global_refine as gr
    from gmmcore.io.star import write_star

    (tmp_path / "particles.mrcs").symlink_to(sim_small["stack"])
    t = read_star(sim_small["perturbed_star"])
    t.half = np.full(len(t), 2, np.int8)
    star = write_star(t, tmp_path / "onehalf.star")
    out = tmp_path / "run"
    rc, err = run(capsys, "refine", "--cpu", "--particles", star, "--out", out, "--iter", "1")
    one_error(rc, err, "refine", star, "rlnRandomSubset", "no particles in half set 1", "use --new-split")
    assert not out.exists()

    class Stop(Exception):
        pass

    seen = {}

    def start(table, *a, **k):
        seen["half"] = table.half.copy()
        raise Stop

    monkeypatch.setattr(gr, "iteration0", start)  # the one iteration-0 writer, as global_refine calls it
    with pytest.raises(Stop):
        gr.run_global(gr.RefineParams(particles=str(star), out=str(out), cpu=True, new_split=True, seed=3))
    assert sorted(np.bincount(seen["half"])[1:].tolist()) == [200, 200]
    assert "new random split" in (out / "run.log").read_text()


@pytest.mark.parametrize("value", ["-3", "0", "nan"])
def test_refine_nonpositive_maxres_refused(tmp_path, capsys, value):
    P = balanced(random_particles(n=4, seed=76))
    star = tmp_path / "in.star"
    star.write_text(star31_text(P))
    rc, err = run(capsys, "refine", "--cpu", "--particles", star, "--out", tmp_path / "o", "--maxres", value)
    one_error(rc, err, "refine", "--maxres", "must be a positive resolution")
    assert not (tmp_path / "o").exists()
