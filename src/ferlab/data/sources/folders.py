"""Image-folder datasets: `root/<split folder>/<class folder>/*` (FER2013's re-upload, report 000's 5-class set).

Class folders are matched to the configured class names case-insensitively; the label is the position of
the name in `class_names` (so the order comes from ferlab.labels, not from the disk). A folder that is not a
class, a class without a folder and a class folder without images are errors listing expected and found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ferlab.data.images import DEFAULT_MAX_PIXELS, decode_images, is_image_file
from ferlab.data.preprocessing import align_manifest
from ferlab.data.sources.base import (
    BAD_SAMPLE_POLICIES,
    SPLITS,
    FERData,
    check_choice,
    count_splits,
    require_path,
)
from ferlab.data.sources.registry import register_source
from ferlab.errors import FerlabError

log = logging.getLogger(__name__)


def _visible(entries: list[Path]) -> list[Path]:
    return [p for p in entries if not p.name.startswith(".")]


def match_class_folders(split_dir: Path, class_names: Sequence[str]) -> list[Path]:
    """The folder of each class, in `class_names` order; folder names are compared case-insensitively."""
    folders = sorted(p for p in _visible(list(split_dir.iterdir())) if p.is_dir())
    by_name: dict[str, Path] = {}
    for f in folders:
        if f.name.lower() in by_name:
            raise FerlabError(f"{split_dir}: class folders {by_name[f.name.lower()].name!r} and {f.name!r} differ only in case")
        by_name[f.name.lower()] = f
    wanted = [c.lower() for c in class_names]
    unknown = [f.name for f in folders if f.name.lower() not in wanted]
    missing = [c for c in class_names if c.lower() not in by_name]
    if unknown or missing:
        raise FerlabError(
            f"{split_dir}: class folders do not match the classes: expected {list(class_names)}, found "
            f"{[f.name for f in folders]} (unknown: {unknown}, missing: {missing}; data.class_names sets the classes)"
        )
    return [by_name[c] for c in wanted]


def list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files of a class folder (sorted by path, recursive, hidden files and folders skipped) and the number
    of other files ignored. One scandir per folder: a 300,000-image tree lists in about a second."""
    found: list[tuple[str, ...]] = []
    pending: list[tuple[str, ...]] = [()]
    while pending:
        rel = pending.pop()
        with os.scandir(folder.joinpath(*rel)) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    pending.append((*rel, e.name))
                elif e.is_file():
                    found.append((*rel, e.name))
    found.sort()  # the order of sorted(Path.rglob(...)): by path components
    images = [path for path in (folder.joinpath(*p) for p in found) if is_image_file(path)]
    return images, len(found) - len(images)


@register_source
class ImageFolders:
    """`root/<folder>/<Class>/*` for each folder in `splits`, decoded to `image_size` and `channels`.

    Args:
        root: the dataset folder.
        class_names: the classes, in label order (data.class_names).
        image_size, channels: every image is converted to this square size (antialiased) and 1 (gray) or 3 (RGB).
        splits: folder name -> split name, e.g. {train: train, test: test}; a `val` folder may map to val.
        on_bad_sample: error (an unreadable image stops with its name) or skip (left out, counted, named in the log).
        max_pixels: images with more pixels are refused before decoding (decompression bombs).
    """

    def __init__(self, root: str, class_names: Sequence[str], image_size: int = 48, channels: int = 1,
                 splits: Mapping[str, str] | None = None, on_bad_sample: str = "error",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.root = Path(root)
        self.class_names = [str(c) for c in class_names]
        self.image_size, self.channels, self.max_pixels = int(image_size), int(channels), int(max_pixels)
        self.splits = dict(splits or {"train": "train", "test": "test"})
        for folder, name in self.splits.items():
            check_choice(f"data.source.splits.{folder}", name, SPLITS)
        if self.channels not in (1, 3):
            raise FerlabError(f"data.source.channels: expected 1 (gray) or 3 (RGB), got {channels}")
        self.on_bad_sample = check_choice("data.source.on_bad_sample", on_bad_sample, BAD_SAMPLE_POLICIES)
        self._scanned: tuple[list[Path], np.ndarray, np.ndarray, dict] | None = None

    @property
    def test_splits(self) -> dict[str, str]:
        """One test set per split folder mapped to a test split (prefix = split name)."""
        return {name: name for name in self.splits.values() if name.startswith("test")}

    def scan(self) -> tuple[list[Path], np.ndarray, np.ndarray, dict]:
        """Every image path with its label and split code, plus the file counts per split and class; the tree is
        walked once per reader (prepare, files and read share it)."""
        if self._scanned is None:
            self._scanned = self._walk()
        paths, labels, split, meta = self._scanned
        return paths, labels, split, dict(meta)

    def _walk(self) -> tuple[list[Path], np.ndarray, np.ndarray, dict]:
        require_path(self.root, "image folder dataset", "pass data.source.root=...", folder=True)
        paths, labels, split, counts, ignored = [], [], [], {}, 0
        for folder, name in self.splits.items():
            split_dir = require_path(self.root / folder, f"{name!r} split folder", "data.source.splits", folder=True)
            counts[folder] = {}
            for label, class_dir in enumerate(match_class_folders(split_dir, self.class_names)):
                images, other = list_images(class_dir)
                if not images:
                    raise FerlabError(f"{class_dir}: no images for class {self.class_names[label]!r} (empty class folder)")
                paths += images
                labels += [label] * len(images)
                split += [SPLITS.index(name)] * len(images)
                counts[folder][self.class_names[label]] = len(images)
                ignored += other
        meta = {"layout": "image folders", "root": str(self.root), "files": counts, "ignored_non_image_files": ignored}
        face = align_manifest(self.root)
        if face is not None:  # a `ferlab align` output: checkpoints trained on it record how its faces were cut
            meta["preprocessing"] = face
        return paths, np.array(labels, dtype=np.int64), np.array(split, dtype=np.int8), meta

    def files(self) -> list[Path]:
        return self.scan()[0]

    def location(self) -> list[Path]:
        """What identifies this dataset's cache: its root (the files inside may come and go)."""
        return [self.root]

    def settings(self) -> dict:
        return {"format": "image_folders", "classes": self.class_names, "size": self.image_size,
                "channels": self.channels, "splits": self.splits, "on_bad_sample": self.on_bad_sample,
                "max_pixels": self.max_pixels}

    def prepare(self) -> None:
        self.scan()

    def read(self) -> FERData:
        paths, labels, split, meta = self.scan()
        decoded = decode_images(paths, self.image_size, self.channels, on_bad_sample=self.on_bad_sample,
                                max_pixels=self.max_pixels, description=f"decoding {self.root.name}/")
        labels, split = labels[decoded.good], split[decoded.good]
        meta["bad_samples"] = decoded.bad_meta()
        meta["decoded"] = count_splits(split)
        for code in np.unique(split):
            present = np.bincount(labels[split == code], minlength=len(self.class_names))
            if (present == 0).any():
                gone = [c for c, n in zip(self.class_names, present, strict=True) if n == 0]
                raise FerlabError(f"{self.root}: split {SPLITS[code]!r} has no usable image of class(es) {gone}")
        return FERData(images=decoded.images, targets=labels, split=split, meta=meta)
