"""FER2013 in Kaggle's CSV layout: `emotion,pixels,Usage`, 48x48 grayscale pixels as space-separated ints."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from ferlab.data.pixels import PixelError, parse_pixel_strings
from ferlab.data.sources.base import SPLITS, FERData
from ferlab.errors import FerlabError
from ferlab.labels import FER2013

PIXELS = 48 * 48
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
WHERE = "FER2013 is on Kaggle (challenges-in-representation-learning-facial-expression-recognition-challenge)"


def require_file(path: Path, what: str) -> Path:
    """The path as a file, or one clear error naming it and where the data comes from."""
    if not path.is_file():
        raise FerlabError(f"{what} not found: {path} ({WHERE}; pass data.source.csv_path=...)")
    return path


def read_csv_columns(path: Path, required: tuple[str, ...]) -> tuple[dict[str, list[str]], int]:
    """Read a CSV into named columns; headers are stripped (icml_face_data.csv pads them with spaces).

    Returns the columns and the number of data rows. Rows are numbered from 2 in errors (line 1 is the header).
    """
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:  # read-only
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise FerlabError(f"{path}: missing column(s) {missing}; expected {list(required)}, found {header}")
        index = [header.index(c) for c in required]
        rows = list(reader)
    cols: dict[str, list[str]] = {c: [] for c in required}
    for line, row in enumerate(rows, start=2):
        if len(row) < len(header):
            raise FerlabError(f"{path}:{line}: expected {len(header)} fields, found {len(row)}")
        for c, i in zip(required, index, strict=False):
            cols[c].append(row[i])
    return cols, len(rows)


def parse_pixels(path: Path, pixels: list[str], size: int = 48) -> np.ndarray:
    """All pixel strings at once into uint8 (N,1,size,size); a bad row is an error naming its line."""
    try:
        values = parse_pixel_strings(pixels, size * size)
    except PixelError as e:
        raise FerlabError(f"{path}:{e.row + 2}: {e.reason}") from None
    return values.reshape(len(pixels), 1, size, size)


def parse_labels(path: Path, labels: list[str], num_classes: int) -> np.ndarray:
    """Integer class ids in [0, num_classes); a bad one is an error naming its line."""
    out = np.empty(len(labels), dtype=np.int64)
    for i, s in enumerate(labels):
        try:
            out[i] = int(s)
        except ValueError:
            raise FerlabError(f"{path}:{i + 2}: label {s!r} is not an integer") from None
    bad = np.flatnonzero((out < 0) | (out >= num_classes))
    if len(bad):
        raise FerlabError(f"{path}:{bad[0] + 2}: label {out[bad[0]]} outside 0-{num_classes - 1}")
    return out


def parse_usage(path: Path, usage: list[str]) -> np.ndarray:
    """Usage strings (Training/PublicTest/PrivateTest) into split codes."""
    codes = {u: SPLITS.index(s) for u, s in USAGE_TO_SPLIT.items()}
    out = np.empty(len(usage), dtype=np.int8)
    for i, u in enumerate(usage):
        code = codes.get(u.strip())
        if code is None:
            raise FerlabError(f"{path}:{i + 2}: unknown Usage {u!r}; expected one of {list(codes)}")
        out[i] = code
    return out


class Fer2013Csv:
    """Kaggle's `fer2013.csv` (or `icml_face_data.csv`): Training/PublicTest/PrivateTest -> train/val/test."""

    def __init__(self, csv_path: str) -> None:
        self.csv_path = Path(csv_path)

    def files(self) -> list[Path]:
        return [require_file(self.csv_path, "FER2013 CSV")]

    def settings(self) -> dict:
        return {"format": "fer2013_csv"}

    def prepare(self) -> None:
        require_file(self.csv_path, "FER2013 CSV")

    def read(self) -> FERData:
        path = require_file(self.csv_path, "FER2013 CSV")
        cols, n = read_csv_columns(path, ("emotion", "pixels", "Usage"))
        if n == 0:
            raise FerlabError(f"{path}: no data rows")
        images = parse_pixels(path, cols["pixels"])
        targets = parse_labels(path, cols["emotion"], len(FER2013))
        split = parse_usage(path, cols["Usage"])
        return FERData(images=images, targets=targets, split=split, meta={"rows": n})
