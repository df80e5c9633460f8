"""FER+ (Microsoft's relabelling of FER2013): ten crowd votes per image turned into labels by one of the four
label modes of the FER+ reference code (github.com/microsoft/FERPlus, src/ferplus.py, `_process_data`).

Votes come from `fer2013new.csv` (one row per fer2013.csv row, same order; pixels from fer2013.csv) or from
the repository's per-folder `FER2013{Train,Valid,Test}/label.csv` files (`name, box, 10 votes`; pixels from
the PNGs beside them). The raw votes are cached; the label mode is applied after the cache, so switching it
never re-parses (rows it drops keep their place in the cached images with the split code DROPPED).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from ferlab.data.images import DEFAULT_MAX_PIXELS, decode_images
from ferlab.data.sources.base import (
    BAD_SAMPLE_POLICIES,
    DROPPED,
    SPLITS,
    FERData,
    check_choice,
    count_splits,
    require_path,
)
from ferlab.data.sources.csvfile import Table, parse_choice, parse_ints, read_table
from ferlab.data.sources.fer2013 import TEST_SETS, USAGE, Fer2013Splits, decode_fer2013
from ferlab.data.sources.registry import register_source
from ferlab.errors import FerlabError
from ferlab.labels import FERPLUS, FERPLUS_EXTRA_COLUMNS

log = logging.getLogger(__name__)

VOTE_COLUMNS = (*FERPLUS, *FERPLUS_EXTRA_COLUMNS)  # 8 emotions, unknown, NF (not a face)
K = len(FERPLUS)
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
# how each mode's train targets reach the loss (FERData.train_targets)
TRAIN_TARGETS = {"majority": "index", "probability": "sample", "crossentropy": "distribution", "multi_target": "distribution"}
FOLDERS = {"FER2013Train": "train", "FER2013Valid": "test_public", "FER2013Test": "test_private"}
WHERE = "FER+ votes are in github.com/microsoft/FERPlus (fer2013new.csv, data/*/label.csv)"


def _top_until_covered(v: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """probability/crossentropy: take the top vote counts (ties together) until 75% of the votes, at most 3.

    Row-parallel transcription of the reference loop; `v` (N,10) is consumed. Returns kept votes and counts.
    """
    n, size = v.shape
    out, covered = np.zeros_like(v), np.zeros(n, v.dtype)
    count, valid = np.zeros(n, np.int64), np.ones(n, bool)
    while True:
        active = (covered < 0.75 * total) & (count < 3) & valid
        if not active.any():
            return out, count
        peak, stopped = v.max(1), np.zeros(n, bool)
        for i in range(size):  # the reference scans classes in column order, ties included
            take = active & ~stopped & (v[:, i] == peak)
            out[take, i], v[take, i] = peak[take], 0
            covered[take] += peak[take]
            count[take] += 1
            if i >= K:  # unknown or NF among the top: stop; drop it if emotions were taken before it
                valid &= ~take
                undo = take & (out.sum(1) > peak)
                out[undo, i], count[undo] = 0, count[undo] - 1
                stopped |= take


def ferplus_targets(votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts (N,10) -> (keep (N,) bool, distribution (N,8) float32) under a FER+ label mode.

    Votes of 1 are zeroed first. majority: the top class if it has more than half the votes. probability /
    crossentropy: the top classes, ties included, until 75% of the votes are covered, at most 3, and more than
    half covered. multi_target: every class with at least 30% of the votes, more than half covered. Rows that
    end up unknown or NF (or fail their rule) are not kept.
    """
    check_choice("data.source.label_mode", mode, LABEL_MODES)
    v = np.where(votes <= 1, 0, votes).astype(np.float64)
    total = v.sum(1)
    if mode == "majority":
        peak = v.max(1)
        out = np.zeros_like(v)
        out[np.arange(len(v)), v.argmax(1)] = peak
        unknown = ~(peak > 0.5 * total)
    elif mode == "multi_target":
        out = np.where(v >= 0.3 * total[:, None], v, 0)
        unknown = out.sum(1) <= 0.5 * total
    else:
        out, count = _top_until_covered(v.copy(), total)
        unknown = (out.sum(1) <= 0.5 * total) | (count > 3)
    out[unknown] = 0
    out[unknown, K] = 1  # the reference's "unknown" vector
    keep = out.argmax(1) < K
    dist = out[:, :K] / np.maximum(out[:, :K].sum(1, keepdims=True), 1e-12)
    return keep, dist.astype(np.float32)


def _votes(table: Table, columns: list[str]) -> np.ndarray:
    return np.stack([parse_ints(table, c, f"{c} votes", 0, 1000) for c in columns], 1).astype(np.float32)


def _check_lined_up(votes: Table, fer: Table, fer_split: list[str], vote_split: list[str]) -> None:
    """fer2013new.csv must list fer2013.csv's rows in order: same count and the same Usage row by row."""
    if len(votes) != len(fer):
        raise FerlabError(f"{votes.path}: {len(votes)} vote rows but {fer.path} has {len(fer)}: the FER+ file must "
                          "list fer2013.csv's rows in the same order (is it the matching fer2013.csv?)")
    for i, (a, b) in enumerate(zip(vote_split, fer_split, strict=True)):
        if a != b:
            raise FerlabError(f"{votes.where(i)}: Usage {votes.cols['Usage'][i].strip()!r} but {fer.where(i)} says "
                              f"{fer.cols['Usage'][i].strip()!r}: the vote rows do not line up with fer2013.csv")


@register_source
class FerPlus(Fer2013Splits):
    """FER+ labels on FER2013 images: 8 classes (ferlab.labels.FERPLUS); rows without an image name are skipped.

    Args:
        csv_path: fer2013.csv (pixels; needed with ferplus_path).
        ferplus_path: fer2013new.csv (`Usage,Image name,<8 emotions>,unknown,NF`), row-aligned with csv_path.
        label_root: instead of ferplus_path: the folder holding FER2013Train/, FER2013Valid/, FER2013Test/, each
            with label.csv (`name, box, 10 votes`, no header) and the PNGs it names.
        label_mode: majority | probability | crossentropy | multi_target, for the train split; validation and
            test always use majority.
        test: private | both | merged, as for Fer2013Csv (FER2013Valid is PublicTest, FER2013Test PrivateTest).
        on_bad_sample, max_pixels: for the PNGs of label_root, as for ImageFolders.
    """

    def __init__(self, csv_path: str | None = None, ferplus_path: str | None = None, label_root: str | None = None,
                 label_mode: str = "majority", test: str = "private", on_bad_sample: str = "error",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if (ferplus_path is None) == (label_root is None):
            raise FerlabError("data.source: give exactly one vote source, ferplus_path (fer2013new.csv, with "
                              "csv_path=fer2013.csv) or label_root (the FER2013Train/Valid/Test folders)")
        self.csv_path = Path(csv_path) if csv_path else None
        self.ferplus_path = Path(ferplus_path) if ferplus_path else None
        self.label_root = Path(label_root) if label_root else None
        self.label_mode = check_choice("data.source.label_mode", label_mode, LABEL_MODES)
        self.test = check_choice("data.source.test", test, TEST_SETS)
        self.on_bad_sample = check_choice("data.source.on_bad_sample", on_bad_sample, BAD_SAMPLE_POLICIES)
        self.max_pixels = int(max_pixels)
        self._listed: list[tuple[Table, list[Path]]] | None = None

    def files(self) -> list[Path]:
        if self.label_root is not None:  # the label.csv files and every image they name
            return [p for table, paths in self._listings() for p in [table.path, *paths]]
        if self.csv_path is None:
            raise FerlabError("data.source.csv_path: FER+ takes its pixels from fer2013.csv; pass its path")
        return [require_path(self.ferplus_path, "FER+ vote file", f"{WHERE}; data.source.ferplus_path"),
                require_path(self.csv_path, "FER2013 CSV", "FER+ takes its pixels from it; data.source.csv_path")]

    def location(self) -> list[Path]:
        """What identifies this dataset's cache: the label folder root, or the two CSVs."""
        return [self.label_root] if self.label_root is not None else [self.ferplus_path, self.csv_path]

    def settings(self) -> dict:
        return {"format": "ferplus", "votes": "label.csv" if self.label_root else "fer2013new.csv",
                "on_bad_sample": self.on_bad_sample, "max_pixels": self.max_pixels}

    def prepare(self) -> None:
        self.files()

    def read(self) -> FERData:
        return self._read_folders() if self.label_root is not None else self._read_csvs()

    def _read_csvs(self) -> FERData:
        votes_path, fer_path = self.files()
        votes = read_table(votes_path, ("Usage", "Image name", *VOTE_COLUMNS))
        fer = read_table(fer_path, ("emotion", "pixels", "Usage"))
        _check_lined_up(votes, fer, parse_choice(fer, "Usage", USAGE), parse_choice(votes, "Usage", USAGE))
        images, _, split = decode_fer2013(fer)  # checked line-up first: no pixel parsing for a wrong pair
        face = np.array([bool(name.strip()) for name in votes.cols["Image name"]])
        counts = _votes(votes, list(VOTE_COLUMNS))
        meta = {"layout": "fer2013new.csv + fer2013.csv", "rows": len(votes), "not_face_rows": int((~face).sum())}
        return self._data(images[face], counts[face], split[face], meta)

    def _listings(self) -> list[tuple[Table, list[Path]]]:
        """Every folder's label.csv table and image paths, read once per reader (files, prepare and read)."""
        if self._listed is None:
            self._listed = [self._folder_listing(folder) for folder in FOLDERS]
        return self._listed

    def _folder_listing(self, folder: str) -> tuple[Table, list[Path]]:
        """A folder's label.csv table and the image path of every row (each must exist)."""
        root = require_path(self.label_root, "FER+ label folder root", WHERE, folder=True)
        n = 2 + len(VOTE_COLUMNS)  # name, box, 10 votes
        table = read_table(require_path(root / folder / "label.csv", "FER+ label.csv", WHERE), (), header=False,
                           optional=tuple(str(j) for j in range(n)), fields=n)
        paths = []
        for i, name in enumerate(table.cols.get("0", [])):
            path = root / folder / name.strip()
            if not name.strip() or not path.is_file():
                raise FerlabError(f"{table.where(i)}: image {name.strip()!r} not found in {root / folder}: "
                                  "the vote rows do not line up with the images")
            paths.append(path)
        return table, paths

    def _read_folders(self) -> FERData:
        paths, votes, split = [], [], []
        for (table, folder_paths), code in zip(self._listings(), FOLDERS.values(), strict=True):
            paths += folder_paths
            votes.append(_votes(table, [str(j) for j in range(2, 2 + len(VOTE_COLUMNS))]))
            split.append(np.full(len(folder_paths), SPLITS.index(code), dtype=np.int8))
        decoded = decode_images(paths, 48, 1, on_bad_sample=self.on_bad_sample, max_pixels=self.max_pixels,
                                description=f"decoding {self.label_root.name}/")
        meta = {"layout": "FER+ label.csv folders", "rows": len(decoded.good), "bad_samples": decoded.bad_meta()}
        good = decoded.good
        return self._data(decoded.images, np.concatenate(votes)[good], np.concatenate(split)[good], meta)

    @staticmethod
    def _data(images: np.ndarray, votes: np.ndarray, split: np.ndarray, meta: dict) -> FERData:
        """Raw votes (N,10) ride in soft_targets until `finish` applies the label mode."""
        meta["file_splits"] = count_splits(split)
        return FERData(images=images, targets=votes[:, :K].argmax(1).astype(np.int64), split=split,
                       soft_targets=votes, meta=meta)

    def finish(self, data: FERData) -> FERData:
        """Apply the label mode to train rows and majority to the others; drop unknown/NF; give splits roles.

        Dropped rows get the split code DROPPED: the images are not touched (no copy of the mapped array).
        """
        train = data.split == SPLITS.index("train")
        keep, dist = np.zeros(len(train), bool), np.zeros((len(train), K), np.float32)
        for rows, mode in ((train, self.label_mode), (~train, "majority")):
            keep[rows], dist[rows] = ferplus_targets(data.soft_targets[rows], mode)
        kept = count_splits(data.split[keep])
        dropped = {name: n - kept.get(name, 0) for name, n in count_splits(data.split).items()}
        log.info("FER+ label_mode=%s (validation/test: majority): kept %s, dropped (unknown/NF/no agreement) %s",
                 self.label_mode, kept, dropped)
        meta = {**data.meta, "label_mode": self.label_mode, "kept_rows": kept, "dropped_rows": dropped}
        split = np.where(keep, data.split, DROPPED).astype(np.int8)
        out = dataclasses.replace(data, targets=dist.argmax(1).astype(np.int64), split=split, soft_targets=dist,
                                  meta=meta, train_targets=TRAIN_TARGETS[self.label_mode])
        return super().finish(out)
