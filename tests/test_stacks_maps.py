"""Image names, stack path resolution, streamed image reading, StackWriter, maps."""
from __future__ import annotations

import os

import mrcfile
import numpy as np
import pytest

from gmmcore.errors import InputError
from gmmcore.io.maps import read_map, write_map
from gmmcore.io.stacks import (StackWriter, iter_images, match_image_names, parse_image_name,
                               resolve_stack_path)
from gmmcore.io.star import read_star
from tests.helpers import random_particles, star31_text, write_stacks


def test_parse_image_name():
    assert parse_image_name("12@path/a.mrcs") == (11, "path/a.mrcs")
    assert parse_image_name("000001@/abs/b.mrcs") == (0, "/abs/b.mrcs")
    assert parse_image_name("single.mrc") == (0, "single.mrc")
    with pytest.raises(InputError, match="rlnImageName"):
        parse_image_name("x@a.mrcs")
    with pytest.raises(InputError):
        parse_image_name("0@a.mrcs")


def test_resolve_stack_path_order(tmp_path, monkeypatch):
    star_dir = tmp_path / "Refine3D" / "job001"
    star_dir.mkdir(parents=True)
    root = tmp_path / "root"
    (root / "Extract").mkdir(parents=True)
    (tmp_path / "Extract").mkdir()
    for d in (root / "Extract", tmp_path / "Extract"):
        (d / "a.mrcs").write_bytes(b"x")
    monkeypatch.chdir(star_dir)
    # image_root first
    assert resolve_stack_path("Extract/a.mrcs", star_dir, root) == str((root / "Extract/a.mrcs").resolve())
    # RELION project folder two levels above the star
    assert resolve_stack_path("Extract/a.mrcs", star_dir, None) == str((tmp_path / "Extract/a.mrcs").resolve())
    # absolute as is; cryoSPARC '>' ignored
    absolute = str((root / "Extract/a.mrcs").resolve())
    assert resolve_stack_path(">" + absolute, star_dir, None) == absolute
    with pytest.raises(InputError) as e:
        resolve_stack_path("Nope/b.mrcs", star_dir, None, source="/data/run.star")
    assert "/data/run.star" in str(e.value) and "rlnImageName" in str(e.value) and "Nope/b.mrcs" in str(e.value)


def _table_with_stacks(tmp_path, n=23, n_stack=3, seed=0):
    P = random_particles(n=n, seed=seed, n_stack=n_stack)
    imgs = write_stacks(tmp_path, P)
    f = tmp_path / "p.star"
    f.write_text(star31_text(P))
    return read_star(f), imgs


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_iter_images_streams_all(tmp_path, chunk):
    t, imgs = _table_with_stacks(tmp_path)
    seen = np.zeros(len(t), int)
    for rows, block in iter_images(t, chunk=chunk):
        assert block.dtype == np.float32 and block.shape[0] == rows.size <= chunk
        np.testing.assert_array_equal(block, imgs[rows])
        seen[rows] += 1
    assert (seen == 1).all()


def test_iter_images_subset(tmp_path):
    t, imgs = _table_with_stacks(tmp_path)
    idx = np.array([20, 3, 5, 11])
    got = {}
    for rows, block in iter_images(t, indices=idx, chunk=3):
        for r, b in zip(rows, block):
            got[int(r)] = b
    assert sorted(got) == sorted(idx.tolist())
    for r in idx:
        np.testing.assert_array_equal(got[r], imgs[r])


def test_iter_images_wrong_size(tmp_path):
    t, _ = _table_with_stacks(tmp_path)
    t.image_size[:] = 20
    with pytest.raises(InputError, match="rlnImageSize"):
        next(iter_images(t))


def test_iter_images_index_out_of_range(tmp_path):
    t, _ = _table_with_stacks(tmp_path, n=6, n_stack=1)
    t.image_name[2] = "000099@stack0.mrcs"
    with pytest.raises(InputError, match="image 99"):
        list(iter_images(t))


@pytest.mark.parametrize("known_n", [True, False])
def test_stack_writer(tmp_path, known_n):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 10, 10)).astype(np.float32)
    out = tmp_path / "s.mrcs"
    with StackWriter(out, 10, 1.7, n=9 if known_n else None) as w:
        if known_n:
            w.write([8, 0, 4], x[[8, 0, 4]])
            w.write([1, 2, 3, 5, 6, 7], x[[1, 2, 3, 5, 6, 7]])
        else:
            w.write(x[:4])
            w.append(x[4:])
        assert not out.exists()  # appears only when closed
    assert os.listdir(tmp_path) == ["s.mrcs"]
    with mrcfile.open(out) as m:
        np.testing.assert_array_equal(m.data, x)
        assert m.is_image_stack()
        assert m.voxel_size.x == pytest.approx(1.7)
        assert float(m.header.dmean) == pytest.approx(float(x.mean()), abs=1e-6)
        assert float(m.header.dmax) == pytest.approx(float(x.max()))


def test_stack_writer_abort_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StackWriter(tmp_path / "s.mrcs", 8, 1.0, n=4) as w:
            w.write([0], np.zeros((1, 8, 8)))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_match_image_names():
    ref = [(0, "J1/a.mrc"), (1, "J1/a.mrc"), (0, "J1/b.mrc")]
    names = [(0, "/proj/J1/b.mrc"), (1, "J1/a.mrc"), (0, ">J1/a.mrc")]
    np.testing.assert_array_equal(match_image_names(names, ref), [2, 1, 0])
    assert match_image_names([(5, "J1/a.mrc")], ref) is None


def test_map_round_trip_and_header(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(12, 10, 8)).astype(np.float32)
    f = tmp_path / "m.mrc"
    write_map(f, vol, 1.25)
    back, apix = read_map(f)
    np.testing.assert_array_equal(back, vol)
    assert apix == pytest.approx(1.25)
    with mrcfile.open(f) as m:
        assert m.is_volume() and m.header.mode == 2
        assert (m.header.nxstart, m.header.nystart, m.header.nzstart) == (0, 0, 0)
        assert float(m.header.origin.x) == 0.0
        assert float(m.header.dmean) == pytest.approx(float(vol.mean()), abs=1e-6)
    assert os.listdir(tmp_path) == ["m.mrc"]


def test_read_map_transposes_axis_order(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.normal(size=(6, 5, 4)).astype(np.float32)  # [z, y, x]
    f = tmp_path / "swapped.mrc"
    # stored with columns = z, rows = y, sections = x
    with mrcfile.new(str(f)) as m:
        m.set_data(np.ascontiguousarray(vol.transpose(2, 1, 0)))
        m.header.mapc, m.header.mapr, m.header.maps = 3, 2, 1
        m.voxel_size = 2.0
    back, apix = read_map(f)
    np.testing.assert_array_equal(back, vol)


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_read_map_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_map(tmp_path / "none.mrc")
    f = tmp_path / "nan.mrc"
    v = np.zeros((4, 4, 4), np.float32)
    v[1, 2, 3] = np.nan
    with mrcfile.new(str(f)) as m:
        m.set_data(v)
        m.voxel_size = 1.0
    with pytest.raises(InputError, match="NaN"):
        read_map(f)


def test_outputs_get_umask_permissions(tmp_path):
    """Atomic writes must not leave mkstemp's private 0600 mode on outputs."""
    import os
    import stat

    from gmmcore.safewrite import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == 0o644


def test_names_resolving_from_the_written_star(tmp_path, monkeypatch):
    """Names written for a star in another folder (refine's final/) resolve from that star alone:
    stacks inside its folder relative to it, all others absolute; read back from elsewhere."""
    from gmmcore.io.stacks import names_resolving_from
    from gmmcore.io.star import write_star

    imp = tmp_path / "imported"
    imp.mkdir()
    t, imgs = _table_with_stacks(imp, n=9, n_stack=2)
    for folder in (tmp_path / "run" / "final", imp):
        folder.mkdir(parents=True, exist_ok=True)
        out = t.subset(np.arange(len(t)))
        out.image_name = names_resolving_from(t, folder)
        write_star(out, folder / "written.star")
        monkeypatch.chdir(tmp_path / "run" if folder != imp else tmp_path)
        back = read_star(folder / "written.star")
        paths = {nm.split("@", 1)[1] for nm in back.image_name}
        if folder == imp:
            assert paths == {"stack0.mrcs", "stack1.mrcs"}
        else:
            assert paths == {str((imp / f"stack{s}.mrcs").resolve()) for s in (0, 1)}
        for rows, block in iter_images(back, chunk=4):
            np.testing.assert_array_equal(block, imgs[rows])


def test_names_resolving_from_keeps_each_rows_index(tmp_path):
    """Many rows naming few stacks (the rewrite is made once per stack): every row keeps its own
    index; a stack inside the folder is written relative to it, one outside absolute, a missing
    stack's relative name as given."""
    from dataclasses import replace

    from gmmcore.io.stacks import names_resolving_from

    imp = tmp_path / "imported"
    imp.mkdir()
    t, _ = _table_with_stacks(imp, n=12, n_stack=2)
    names = list(t.image_name) + ["3@missing/gone.mrcs", "000004@missing/gone.mrcs"]
    t2 = replace(t, image_name=np.asarray(names, dtype=object))
    inside = names_resolving_from(t2, imp)
    outside = names_resolving_from(t2, tmp_path / "elsewhere")
    for r, nm in enumerate(names[:12]):
        i, p = nm.split("@", 1)
        assert inside[r] == f"{int(i):06d}@{p}"
        assert outside[r] == f"{int(i):06d}@{(imp / p).resolve()}"
    assert list(inside[12:]) == list(outside[12:]) == names[12:]


def test_same_data_same_bytes_whenever_written(tmp_path, monkeypatch):
    """mrcfile labels a new file with the time to the second; the engine's files carry a fixed label,
    so a stack (whose content stamp a star records) and a map are the same bytes when written again
    later — e.g. two imports of one star a second apart (a fresh-clone CI run caught this)."""
    import datetime as dt

    import mrcfile.mrcobject
    from gmmcore.io.maps import write_map
    from gmmcore.io.stacks import StackWriter, stack_stamp

    images = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    written = []
    for k, when in enumerate((dt.datetime(2026, 1, 1, 0, 0, 0), dt.datetime(2027, 6, 1, 12, 30, 59))):
        class Clock(dt.datetime):
            @classmethod
            def now(cls, tz=None):
                return when
        monkeypatch.setattr(mrcfile.mrcobject, "datetime", Clock)
        with StackWriter(tmp_path / f"s{k}.mrcs", 8, 1.5) as w:
            w.write(images)
        write_map(tmp_path / f"m{k}.mrc", np.ones((8, 8, 8), np.float32), 1.5)
        written.append(k)
    assert (tmp_path / "s0.mrcs").read_bytes() == (tmp_path / "s1.mrcs").read_bytes()
    assert stack_stamp(tmp_path / "s0.mrcs") == stack_stamp(tmp_path / "s1.mrcs")
    assert (tmp_path / "m0.mrc").read_bytes() == (tmp_path / "m1.mrc").read_bytes()
    with mrcfile.open(tmp_path / "m0.mrc") as m:
        assert [label.strip() for label in m.get_labels()] == ["Created by gmmcore"]


def test_stack_refs_read_what_the_names_read(tmp_path, monkeypatch):
    """The compact hand-off (stack codes + indices, no name strings) reads the same images in the
    same order and chunks as the names; image_keys parsed block by block equals one pass."""
    import gmmcore.particles as particles
    from gmmcore.io.stacks import iter_stack_images, stack_refs
    from gmmcore.particles import image_keys

    t, imgs = _table_with_stacks(tmp_path, n=40, n_stack=3)
    idx = np.array([39, 3, 5, 11, 0, 17, 22, 30, 8])
    refs = stack_refs(t, idx)
    assert len(refs) == idx.size and refs.code.dtype == np.int32 and all(os.path.isabs(p) for p in refs.paths)
    # names → compact → names: the same (index, stack) per particle
    for j, r in enumerate(idx):
        i, p = parse_image_name(t.image_name[r])
        assert refs.index0[j] == i and refs.paths[refs.code[j]] == resolve_stack_path(p, tmp_path)
    for chunk in (1, 4, 1000):
        by_names = list(iter_images(t, idx, chunk))
        by_refs = list(iter_stack_images(refs, chunk))
        assert len(by_names) == len(by_refs)
        for (rows, a), (pos, b) in zip(by_names, by_refs):
            np.testing.assert_array_equal(rows, idx[pos])
            np.testing.assert_array_equal(a, b)
    whole = image_keys(t.image_name)
    monkeypatch.setattr(particles, "KEYS_BLOCK", 7)
    blocked = image_keys(t.image_name)
    for f in ("index0", "path_code", "bare"):
        np.testing.assert_array_equal(getattr(whole, f), getattr(blocked, f))
    assert whole.paths == blocked.paths
    t.image_name[9] = "x@stack0.mrcs"
    with pytest.raises(InputError, match="row 10"):
        image_keys(t.image_name)
