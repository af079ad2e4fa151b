"""The streaming STAR block reader and writer against the ``starfile`` package (the reference)."""
import io

import numpy as np
import pandas as pd
import pytest
import starfile

from gmmcore.errors import InputError
from gmmcore.io import star_blocks
from gmmcore.io.star import read_star_blocks
from gmmcore.io.star_blocks import read_blocks, scan_layout, write_blocks

AWKWARD = """
# version 30001

data_general

_rlnImageSizeX   64
_rlnMicrographName   000123
_rlnDetectorPixelSize 1.5

# a comment between blocks
data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
1 opticsGroup1 1.25
2 opticsGroup2 1.25

data_empty

loop_
_rlnA #1
_rlnB #2

data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnAngleRot #3
_rlnOpticsGroup #4
_rlnClassNumber #5
_rlnMaybe #6
_rlnText #7
000001@stack_0001.mrcs 000123 10.5 1 3 nan abc
# a comment inside the loop

000002@stack_0001.mrcs 000124 -2e-3 2 1 nan def  # a trailing comment
000003@stack_0002.mrcs 000125 7 1 2 <NA> 12x

"""


def _same(a, b):
    assert list(a) == list(b)
    for k in a:
        if isinstance(a[k], pd.DataFrame):
            pd.testing.assert_frame_equal(a[k].reset_index(drop=True), b[k], check_exact=True)
        else:
            assert a[k] == b[k]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_read_blocks_types_values_as_starfile(tmp_path, newline):
    f = tmp_path / "awkward.star"
    f.write_bytes(AWKWARD.replace("\n", newline).encode())
    strings = ["rlnImageName", "rlnMicrographName", "rlnOpticsGroupName"]
    ours = read_blocks(f, strings)
    _same(starfile.read(f, always_dict=True, parse_as_string=strings), ours)
    p = ours["particles"]
    assert p["rlnMicrographName"].tolist() == ["000123", "000124", "000125"]  # names stay text
    assert p["rlnAngleRot"].tolist() == [10.5, -0.002, 7.0]
    assert p["rlnClassNumber"].dtype == np.int64 and p["rlnClassNumber"].tolist() == [3, 1, 2]
    assert p["rlnMaybe"].isna().all() and p["rlnText"].tolist() == ["abc", "def", "12x"]
    assert ours["general"] == {"rlnImageSizeX": 64, "rlnMicrographName": "000123", "rlnDetectorPixelSize": 1.5}
    assert len(ours["empty"]) == 0 and list(ours["empty"].columns) == ["rlnA", "rlnB"]


def test_layout_finds_rows_and_quotes():
    blocks = scan_layout(io.StringIO(AWKWARD))
    parts = [b for b in blocks if b.name == "particles"][0]
    assert parts.loop and parts.rows == 3 and not parts.quoted and len(parts.labels) == 7
    quoted = scan_layout(io.StringIO("data_x\nloop_\n_rlnA #1\n_rlnB #2\n1 'a b'\n"))
    assert quoted[0].quoted and quoted[0].rows == 1


def test_quoted_values_are_read(tmp_path):
    f = tmp_path / "q.star"
    f.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnNote #2\n1@a.mrcs 'two words'\n2@a.mrcs x\n")
    assert read_blocks(f, ["rlnImageName"])["particles"]["rlnNote"].tolist() == ["two words", "x"]


def test_rows_wider_than_labels_are_a_file_error(tmp_path):
    f = tmp_path / "bad.star"
    f.write_text("data_particles\n\nloop_\n_rlnA #1\n_rlnB #2\n1 2 3\n4 5 6\n")
    with pytest.raises(InputError) as e:
        read_star_blocks(f)
    assert "bad.star" in str(e.value)


def test_write_blocks_bytes_as_starfile(monkeypatch):
    n = 23
    rng = np.random.default_rng(3)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@Extract/job 7/stack.mrcs" if i % 5 == 0 else f"{i + 1:06d}@s.mrcs"
                         for i in range(n)],
        "rlnMicrographName": ["" if i % 7 == 0 else f"mic{i}" for i in range(n)],
        "rlnAngleRot": rng.normal(0, 90, n),
        "rlnOriginXAngst": np.where(np.arange(n) % 4 == 0, np.nan, rng.normal(0, 2, n)),
        "rlnOpticsGroup": np.arange(n) % 2 + 1,
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["g one", "g2"],
                           "rlnImagePixelSize": [1.1, 1.2]})
    blocks = {"optics": optics, "particles": particles}
    ref = starfile.to_string(blocks, float_format="%.10g", na_rep="nan").split("\n", 1)[1].lstrip("\n")
    for chunk in (4, 23, 1000):  # chunk boundaries do not show in the text
        monkeypatch.setattr(star_blocks, "ROWS_PER_CHUNK", chunk)
        f = io.StringIO()
        write_blocks(f, blocks, "%.10g", "nan")
        assert f.getvalue() == ref
