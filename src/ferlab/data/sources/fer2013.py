"""FER2013 in Kaggle's CSV layouts: `fer2013.csv` / `icml_face_data.csv` (`emotion,pixels,Usage`) and the
`train.csv` (`emotion,pixels`) + `test.csv` (`pixels` only) pair. Pixels are 48x48 grayscale ints.

The reader keeps the file's own splits (Training/PublicTest/PrivateTest as train/test_public/test_private);
`test` decides after the cache what PublicTest and PrivateTest are for, so switching it never re-parses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlab.data.progress import progress
from ferlab.data.sources.base import SPLITS, FERData, check_choice, count_splits, require_path, split_codes
from ferlab.data.sources.csvfile import Table, parse_choice, parse_ints, parse_pixels, read_table, read_text
from ferlab.data.sources.registry import register_source
from ferlab.errors import FerlabError
from ferlab.labels import FER2013

USAGE = {"Training": "train", "PublicTest": "test_public", "PrivateTest": "test_private"}
WHERE = "FER2013 is on Kaggle (challenges-in-representation-learning-facial-expression-recognition-challenge)"

# test: what the two official test halves become. private: PublicTest validates, PrivateTest tests (Kaggle's
# final ranking); both: each is reported (test_public/*, test_private/*), PublicTest also validates;
# merged: one test set of both halves (7,178 rows, as report 001), validation must be carved from Training.
TEST_SETS = ("private", "both", "merged")
_ROLES = {
    "private": {"test_public": "val", "test_private": "test"},
    "both": {},
    "merged": {"test_public": "test", "test_private": "test"},
}
_TEST_SPLITS = {
    "private": {"test": "test"},
    "both": {"test_public": "test_public", "test_private": "test_private"},
    "merged": {"test": "test"},
}
_VAL_SPLIT = {"private": "val", "both": "test_public", "merged": None}


def remap_splits(split: np.ndarray, roles: dict[str, str]) -> np.ndarray:
    """Split codes renamed through `roles` (code name -> new code name); others (and DROPPED rows) stay."""
    lut = np.arange(len(SPLITS), dtype=np.int8)
    for old, new in roles.items():
        lut[SPLITS.index(old)] = SPLITS.index(new)
    return np.where(split >= 0, lut[np.maximum(split, 0)], split).astype(np.int8)


class Fer2013Splits:
    """The `test` choice shared by every source that carries FER2013's Usage column (FER2013, FER+, synthetic)."""

    test: str

    @property
    def test_splits(self) -> dict[str, str]:
        """Metric prefix -> split name, e.g. {"test_public": "test_public", "test_private": "test_private"}."""
        return dict(_TEST_SPLITS[self.test])

    @property
    def val_split(self) -> str | None:
        """The split used for validation under data.split=official (None: there is none)."""
        return _VAL_SPLIT[self.test]

    def finish(self, data: FERData) -> FERData:
        """Give PublicTest and PrivateTest their roles."""
        data.split = remap_splits(data.split, _ROLES[self.test])
        return data


def read_fer2013_table(path: Path) -> Table:
    """A FER2013 CSV's columns (emotion, pixels and Usage when present), not yet parsed."""
    table = read_table(path, ("emotion", "pixels"), optional=("Usage",))
    if not len(table):
        raise FerlabError(f"{path}: no data rows")
    return table


def decode_fer2013(table: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images uint8 (N,1,48,48), labels int64 (N,) and the file's split codes (N,) of a FER2013 table."""
    with progress(f"parsing {table.path.name}", len(table), unit="rows") as advance:
        images = parse_pixels(table, advance=advance)
    labels = parse_ints(table, "emotion", "label", 0, len(FER2013) - 1)
    if "Usage" in table.cols:
        split = split_codes(parse_choice(table, "Usage", USAGE), {s: s for s in USAGE.values()})
    else:  # train.csv: every row is a Training row
        split = np.full(len(table), SPLITS.index("train"), dtype=np.int8)
    return images, labels, split


def check_test_csv(path: Path) -> None:
    """Kaggle's test.csv has no labels: say so before anything is parsed, instead of failing later."""
    first = read_text(path, first_line=True)
    header = [h.strip().strip('"') for h in first.rstrip("\r\n").split(",")]
    if "emotion" not in header:
        raise FerlabError(
            f"{path}: no 'emotion' column (found {header}): Kaggle's test.csv is unlabelled and cannot be a test "
            "split; drop data.source.test_csv_path and hold a test split out of train.csv with data.test_fraction=0.1"
        )


@register_source
class Fer2013Csv(Fer2013Splits):
    """Kaggle's FER2013 CSVs. Classes in FER2013's id order (ferlab.labels.FER2013).

    Args:
        csv_path: fer2013.csv, icml_face_data.csv (headers with leading spaces) or train.csv (no Usage column:
            every row is Training).
        test_csv_path: a second CSV whose rows are the test split; it must have labels (Kaggle's test.csv has none).
        test: private | both | merged (see TEST_SETS).
    """

    def __init__(self, csv_path: str, test_csv_path: str | None = None, test: str = "private") -> None:
        self.csv_path = Path(csv_path)
        self.test_csv_path = Path(test_csv_path) if test_csv_path else None
        self.test = check_choice("data.source.test", test, TEST_SETS)

    def files(self) -> list[Path]:
        files = [require_path(self.csv_path, "FER2013 CSV", f"{WHERE}; pass data.source.csv_path=...")]
        if self.test_csv_path is not None:
            files.append(require_path(self.test_csv_path, "FER2013 test CSV", "data.source.test_csv_path"))
        return files

    def settings(self) -> dict:
        return {"format": "fer2013_csv"}

    def prepare(self) -> None:
        self.files()
        if self.test_csv_path is not None:
            check_test_csv(self.test_csv_path)

    def read(self) -> FERData:
        self.prepare()
        table = read_fer2013_table(self.csv_path)
        images, labels, split = decode_fer2013(table)
        layout = "fer2013.csv" if "Usage" in table.cols else "train.csv"
        if self.test_csv_path is not None:
            t_images, t_labels, _ = decode_fer2013(read_fer2013_table(self.test_csv_path))
            t_split = np.full(len(t_labels), SPLITS.index("test_private"), dtype=np.int8)
            images, labels = np.concatenate([images, t_images]), np.concatenate([labels, t_labels])
            split, layout = np.concatenate([split, t_split]), f"{layout} + labelled {self.test_csv_path.name}"
        meta = {"layout": layout, "rows": len(labels), "file_splits": count_splits(split)}
        return FERData(images=images, targets=labels, split=split, meta=meta)
