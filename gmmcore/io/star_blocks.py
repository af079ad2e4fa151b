"""STAR data blocks to and from pandas DataFrames, streamed from and to the file.

Reading: one pass over the lines finds each block, its labels and where its loop rows lie; pandas'
C parser then reads each loop straight from the file (``skiprows``/``nrows``), so memory holds the
resulting frame and the parser's buffers, never the file's text.  ``starfile`` (which we still use
for files with quoted values) keeps the whole text several times over while parsing (the line
cache, the joined loop, its quote-replaced copy, a ``StringIO``): ≈ 1.1 KB per particle row
transiently, against ≈ 0.35 KB for the frame itself.

Values are typed as ``starfile.read`` types them: a column is numeric when every value parses
(``int64`` or ``float64``), else strings; labels in ``strings`` stay strings whatever they hold;
``nan``, ``NaN`` and ``<NA>`` are missing.  Simple (non-loop) blocks become dicts of int, float or
str values.  Comments (``#`` to the end of a line) and blank lines are skipped.

Writing: byte for byte what ``starfile.to_string`` writes (header line, ``data_``/``loop_``/
``_label #i`` lines, tab-separated rows, strings with a space or empty in double quotes), with the
rows formatted chunk by chunk into the open file, so memory holds one chunk's text.
"""
from __future__ import annotations

import csv
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, TextIO, Union

import numpy as np
import pandas as pd

ROWS_PER_CHUNK = 50_000  # rows formatted at once when writing (a memory knob: the text is the same)
_MISSING = ["nan", "NaN", "<NA>"]


@dataclass
class BlockLayout:
    """Where a data block lies in the file (lines counted from 0)."""

    name: str
    loop: bool = False
    labels: List[str] = field(default_factory=list)
    first_row_line: Optional[int] = None  # line of the first loop row
    rows: int = 0  # loop rows (lines that are neither blank nor comments)
    quoted: bool = False  # a loop row holds a quote character
    pairs: List[str] = field(default_factory=list)  # simple block: its "_label value" lines


def scan_layout(lines: Iterable[str]) -> List[BlockLayout]:
    """Blocks of a STAR file from its lines, as the reader needs them."""
    blocks: List[BlockLayout] = []
    cur: Optional[BlockLayout] = None
    in_header = False
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("data_"):
            cur = BlockLayout(name=s[5:])
            blocks.append(cur)
            in_header = False
            continue
        if cur is None or not s or s.startswith("#"):
            continue
        if s.startswith("loop_") and not cur.loop and not cur.pairs:
            cur.loop, in_header = True, True
        elif s.startswith("_") and (in_header or not cur.loop):
            if cur.loop:
                cur.labels.append(s.split()[0][1:])
            else:
                cur.pairs.append(s)
        elif cur.loop:
            in_header = False
            if cur.first_row_line is None:
                cur.first_row_line = i
            cur.rows += 1
            if "'" in s or '"' in s:
                cur.quoted = True
    return blocks


def _value(v: str, as_string: bool) -> Union[int, float, str]:
    if as_string:
        return v
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def _simple_block(b: BlockLayout, strings) -> dict:
    out = {}
    for line in b.pairs:
        k, v = shlex.split(line)
        out[k[1:]] = _value(v, k[1:] in strings)
    return out


def _loop_frame(path: Path, b: BlockLayout, strings) -> pd.DataFrame:
    if b.rows == 0:
        return pd.DataFrame({lab: np.zeros(0) for lab in b.labels})
    dtype = {j: str for j, lab in enumerate(b.labels) if lab in strings}
    df = pd.read_csv(path, sep=r"\s+", header=None, skiprows=b.first_row_line, nrows=b.rows, comment="#",
                     dtype=dtype, keep_default_na=False, na_values=_MISSING, engine="c",
                     encoding_errors="replace", quoting=csv.QUOTE_NONE)
    if df.shape[1] != len(b.labels):
        raise ValueError(f"data_{b.name} has {len(b.labels)} labels but its rows hold {df.shape[1]} values")
    df.columns = b.labels
    for j, lab in enumerate(b.labels):  # a column read as text but numeric throughout (e.g. all missing)
        if j not in dtype and df[lab].dtype == object:
            try:
                df[lab] = pd.to_numeric(df[lab])
            except (ValueError, TypeError):
                pass
    return df


def read_blocks(path, strings: Iterable[str] = ()) -> Dict[str, Union[pd.DataFrame, dict]]:
    """All data blocks of the STAR file ``path``: loops as DataFrames, simple blocks as dicts.
    ``strings``: labels whose values stay strings even when they look like numbers."""
    path = Path(path)
    strings = set(strings)
    with open(path, "r", errors="replace") as f:
        layout = scan_layout(f)
    if any(b.quoted for b in layout):  # quoted values: starfile's own parser handles them
        import starfile

        return starfile.read(path, always_dict=True, parse_as_string=sorted(strings))
    return {b.name: (_loop_frame(path, b, strings) if b.loop else _simple_block(b, strings)) for b in layout}


# -------------------------------------------------------------------------------------------- writing
def _quoted(col: pd.Series) -> pd.Series:
    """Strings with a space, and empty strings, in double quotes (starfile's rule); others as they are."""
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return col
    return col.map(lambda x: f'"{x}"' if isinstance(x, str) and (" " in x or not x) else x)


def write_loop(f: TextIO, name: str, df: pd.DataFrame, float_format: str, na_rep: str) -> None:
    """One loop block, as ``starfile`` writes it, rows formatted ``ROWS_PER_CHUNK`` at a time."""
    f.write(f"data_{name}\n\nloop_\n")
    f.write("".join(f"_{c} #{j}\n" for j, c in enumerate(df.columns, 1)))
    for a in range(0, len(df), ROWS_PER_CHUNK):
        chunk = df.iloc[a:a + ROWS_PER_CHUNK]
        chunk = pd.DataFrame({c: _quoted(chunk[c]) for c in chunk.columns})
        f.write(chunk.to_csv(sep="\t", header=False, index=False, float_format=float_format, na_rep=na_rep,
                             quoting=csv.QUOTE_NONE, lineterminator="\n"))
    f.write("\n\n")


def write_blocks(f: TextIO, blocks: Dict[str, pd.DataFrame], float_format: str, na_rep: str) -> None:
    """Loop blocks in order (the body of what ``starfile.to_string`` writes, without its first line)."""
    for name, df in blocks.items():
        write_loop(f, name, df, float_format, na_rep)
