"""What the in-the-wild readers (RAF-DB, AffectNet) share: decode settings, a listing of (image, label, split,
face box) rows checked against the disk, and one decode of it.

A reader scans its layout into a `Listing` (each row remembers where it was listed, for error messages), then
`ListedImages.decode` hands the paths (and boxes) to `decode_images`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferlab.data.images import DEFAULT_MAX_PIXELS, SHOW_BAD, decode_images
from ferlab.data.sources.base import BAD_SAMPLE_POLICIES, SPLITS, FERData, check_choice, count_splits
from ferlab.errors import FerlabError

log = logging.getLogger(__name__)


@dataclass
class Listing:
    """Rows to decode: image paths, labels (0-based), split names, optional (x, y, w, h) boxes, optional
    (valence, arousal) pairs (NaN: not annotated), and where each row was listed (`file:line` or a file) for error
    messages. `dropped` counts rows left out, by reason."""

    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] | None = None
    where: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    va: list[tuple[float, float]] | None = None

    def add(self, path: Path, label: int, split: str, where: str, box: tuple[int, int, int, int] | None = None,
            va: tuple[float, float] | None = None) -> None:
        self.paths.append(path)
        self.labels.append(label)
        self.splits.append(split)
        self.where.append(where)
        if self.boxes is not None:  # a listing with boxes (Listing(boxes=[])) has one per row
            self.boxes.append(box)
        if self.va is not None:  # likewise a listing with VA (Listing(va=[]))
            self.va.append(va)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def keep(self, rows: np.ndarray) -> None:
        """Keep only rows at the positions `rows` (sorted)."""
        pick = rows.tolist()
        self.paths = [self.paths[i] for i in pick]
        self.labels = [self.labels[i] for i in pick]
        self.splits = [self.splits[i] for i in pick]
        self.where = [self.where[i] for i in pick]
        self.boxes = None if self.boxes is None else [self.boxes[i] for i in pick]
        self.va = None if self.va is None else [self.va[i] for i in pick]


class ListedImages:
    """Decode settings and the decode step of a listed dataset.

    Args:
        root: the dataset folder.
        image_size, channels: every face is decoded once to this square side and 1 (gray) or 3 (RGB).
        on_bad_sample: error (an unreadable or missing image stops with its name and list line) or skip (left out,
            counted, named in the log).
        max_pixels: images with more pixels are refused before decoding (decompression bombs).

    `split=official` validates on the test set (there is no other labelled held-out set), as the papers do:
    that selects the checkpoint on the test images.
    """

    val_split = "test"

    def __init__(self, root: str, image_size: int = 224, channels: int = 3, on_bad_sample: str = "error",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.root = Path(root)
        self.image_size, self.channels, self.max_pixels = int(image_size), int(channels), int(max_pixels)
        if self.channels not in (1, 3):
            raise FerlabError(f"data.source.channels: expected 1 (gray) or 3 (RGB), got {channels}")
        self.on_bad_sample = check_choice("data.source.on_bad_sample", on_bad_sample, BAD_SAMPLE_POLICIES)

    @property
    def test_splits(self) -> dict[str, str]:
        return {"test": "test"}

    def location(self) -> list[Path]:
        """What identifies this dataset's cache: its root."""
        return [self.root]

    def decode_settings(self) -> dict:
        return {"size": self.image_size, "channels": self.channels, "on_bad_sample": self.on_bad_sample,
                "max_pixels": self.max_pixels}

    def check_present(self, listing: Listing) -> None:
        """Every listed image must exist: an error naming the list line, or with on_bad_sample=skip, dropped."""
        present = np.array([p.is_file() for p in listing.paths], dtype=bool)
        missing = np.flatnonzero(~present)
        if not len(missing):
            return
        first = int(missing[0])
        if self.on_bad_sample == "error":
            raise FerlabError(f"{listing.where[first]}: image {listing.paths[first]} not found "
                              "(data.source.on_bad_sample=skip leaves missing images out)")
        log.warning("skipped %d listed image(s) not found (on_bad_sample=skip), e.g. %s", len(missing),
                    "; ".join(str(listing.paths[i]) for i in missing[:SHOW_BAD]))
        listing.drop("missing_image", len(missing))
        listing.keep(np.flatnonzero(present))

    def decode(self, listing: Listing, meta: dict) -> FERData:
        """Decode the listed images (cropped to their boxes, if any) into FERData, with `meta` and the counts.
        `listing` and `meta` are left as they were (a reader may have memoised them)."""
        listing, meta = dataclasses.replace(listing, dropped=dict(listing.dropped)), dict(meta)
        self.check_present(listing)
        if not listing.paths:
            raise FerlabError(f"{self.root}: no images left to decode (dropped: {listing.dropped})")
        boxes = None if listing.boxes is None else np.array(listing.boxes, dtype=np.int64).reshape(-1, 4)
        decoded = decode_images(listing.paths, self.image_size, self.channels, on_bad_sample=self.on_bad_sample,
                                max_pixels=self.max_pixels, description=f"decoding {self.root.name}/", boxes=boxes)
        labels = np.array(listing.labels, dtype=np.int64)[decoded.good]
        split = np.array([SPLITS.index(s) for s in listing.splits], dtype=np.int8)[decoded.good]
        meta.update(dropped=dict(listing.dropped), bad_samples=decoded.bad_meta(), decoded=count_splits(split))
        va = None if listing.va is None else np.array(listing.va, dtype=np.float32).reshape(-1, 2)[decoded.good]
        return FERData(images=decoded.images, targets=labels, split=split, meta=meta, va=va)
