"""CSV files of the FER datasets read into named columns once, with errors that name the file and line.

FER2013's rows carry an 8 KB pixel field; Python's csv module walks it character by character, so plain
rows are split with str.split and only rows with quotes that need it go through the csv module.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferlab.data.pixels import PixelError, parse_pixel_strings
from ferlab.errors import FerlabError


@dataclass
class Table:
    """Columns of a CSV: `cols[name]` is a list of strings; `lines[i]` is the file line of data row i."""

    path: Path
    header: list[str]
    cols: dict[str, list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, row: int) -> str:
        """`path:line` of data row `row`, for error messages."""
        return f"{self.path}:{self.lines[row]}"


def _fields(line: str) -> list[str]:
    """One CSV line's fields; quoted fields without inner commas or quotes are unwrapped without the csv module."""
    parts = line.split(",")
    if '"' not in line:
        return parts
    if all(p.count('"') == 0 or (len(p) >= 2 and p[0] == p[-1] == '"' and p.count('"') == 2) for p in parts):
        return [p[1:-1] if p[:1] == '"' else p for p in parts]
    csv.field_size_limit(sys.maxsize)
    return next(csv.reader([line]))


def read_text(path: Path, first_line: bool = False) -> str:
    """The file's text, or only its first line (read-only, BOM stripped); unreadable or non-text is a FerlabError."""
    try:
        with path.open("rb") as f:
            return (f.readline() if first_line else f.read()).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FerlabError(f"{path}: not a text CSV file (undecodable byte at offset {e.start})") from None
    except OSError as e:
        raise FerlabError(f"{path}: cannot read ({e.strerror})") from None


def read_table(path: Path, required: tuple[str, ...], *, header: bool = True, optional: tuple[str, ...] = (),
               fields: int | None = None) -> Table:
    """Read `required` (and present `optional`) columns; headers are stripped (icml_face_data.csv pads them).

    Without a header (FER+ label.csv), there are `fields` columns named by position: "0", "1", ...
    Blank lines are skipped; line numbers in errors count from 1 at the top of the file.
    """
    lines = read_text(path).split("\n")
    first = 0
    while first < len(lines) and not lines[first].strip():
        first += 1
    if first == len(lines):
        raise FerlabError(f"{path}: the file is empty")
    names = [h.strip() for h in _fields(lines[first].rstrip("\r"))] if header else None
    body = range(first + 1, len(lines)) if header else range(first, len(lines))
    rows, numbers = [], []
    for i in body:
        line = lines[i].rstrip("\r")
        if line.strip():
            rows.append(_fields(line))
            numbers.append(i + 1)
    if names is None:
        names = [str(j) for j in range(fields or 0)]
    missing = [c for c in required if c not in names]
    if missing:
        also = f" (and optionally {list(optional)})" if optional and header else ""
        raise FerlabError(f"{path}: missing column(s) {missing}; expected {list(required)}{also}, found {names}")
    wanted = [*required, *(c for c in optional if c in names)]
    index = [names.index(c) for c in wanted]
    for row, line in zip(rows, numbers, strict=True):
        if len(row) != len(names):
            raise FerlabError(f"{path}:{line}: expected {len(names)} fields, found {len(row)}")
    cols = {c: [r[j] for r in rows] for c, j in zip(wanted, index, strict=True)}
    return Table(path, names, cols, numbers)


def parse_pixels(table: Table, column: str = "pixels", size: int = 48,
                 advance: Callable[[int], None] | None = None) -> np.ndarray:
    """All pixel strings at once into uint8 (N,1,size,size); a bad row is an error naming its line."""
    try:
        values = parse_pixel_strings(table.cols[column], size * size, on_chunk=advance)
    except PixelError as e:
        raise FerlabError(f"{table.where(e.row)}: {e.reason}") from None
    return values.reshape(len(table), 1, size, size)


def parse_ints(table: Table, column: str, what: str, lo: int, hi: int) -> np.ndarray:
    """Integers in [lo, hi] from a column; a bad one is an error naming its line."""
    out = np.empty(len(table), dtype=np.int64)
    for i, s in enumerate(table.cols[column]):
        try:
            out[i] = int(s)
        except ValueError:
            raise FerlabError(f"{table.where(i)}: {what} {s!r} is not an integer") from None
    bad = np.flatnonzero((out < lo) | (out > hi))
    if len(bad):
        raise FerlabError(f"{table.where(int(bad[0]))}: {what} {out[bad[0]]} outside {lo}-{hi}")
    return out


def parse_choice(table: Table, column: str, choices: dict[str, str]) -> list[str]:
    """Column values (stripped) mapped through `choices`; an unknown value is an error naming its line."""
    out = []
    for i, v in enumerate(table.cols[column]):
        mapped = choices.get(v.strip())
        if mapped is None:
            raise FerlabError(f"{table.where(i)}: unknown {column} {v!r}; expected one of {list(choices)}")
        out.append(mapped)
    return out
