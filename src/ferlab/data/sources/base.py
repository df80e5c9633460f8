"""What every source reader returns: decoded uint8 images, targets and split membership."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ferlab.errors import DataNotFound, FerlabError

# Split codes stored in FERData.split; a reader uses the ones its format has.
SPLITS = ("train", "val", "test", "test_public", "test_private")
DROPPED = -1  # split code of a row no split uses (e.g. a FER+ image its label mode drops); it stays in the cache
# How the train split's targets reach the loss: class ids, (K,) distributions, or a class drawn per draw
TRAIN_TARGETS = ("index", "distribution", "sample")
BAD_SAMPLE_POLICIES = ("error", "skip")


@dataclass
class FERData:
    """A decoded dataset: images uint8 (N,C,H,W), targets int64 (N,), split codes int8 (N,) into SPLITS
    (or DROPPED).

    `images` is whatever the reader returns (images from `decode_images` are a memory-mapped .npy); from the
    cache it is the cached .npy mapped read-only, with `digests` (N,16) uint8 (BLAKE2 of each image's bytes)
    and `pixel_std` (N,) float32 filled in once when the cache was written.
    `soft_targets` (N,K) float32 holds label distributions where the format has them (FER+ votes).
    `train_targets` says what train batches carry: "index" (targets), "distribution" (soft_targets rows)
    or "sample" (a class drawn from the soft_targets row each time the image is drawn).
    `meta` carries counts worth logging (rows read, rows dropped and why).
    `va` (N,2) float32 holds valence and arousal in [-1, 1] where the format has them (AffectNet), NaN in a row
    without an annotation.
    """

    images: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    soft_targets: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    train_targets: str = "index"
    digests: np.ndarray | None = None
    pixel_std: np.ndarray | None = None
    va: np.ndarray | None = None

    def indices(self, name: str) -> np.ndarray:
        """Row indices of one split."""
        return np.flatnonzero(self.split == SPLITS.index(name))

    def split_sizes(self) -> dict[str, int]:
        """Rows per split present in the data."""
        return count_splits(self.split)


def count_splits(split: np.ndarray) -> dict[str, int]:
    """Rows per split code present in `split`, by name (DROPPED rows are not counted)."""
    counts = np.bincount(split[split >= 0], minlength=len(SPLITS))
    return {name: int(counts[i]) for i, name in enumerate(SPLITS) if counts[i]}


def split_codes(names: list[str] | np.ndarray, mapping: dict[str, str]) -> np.ndarray:
    """Split names (e.g. Usage values) mapped through `mapping` to int8 codes into SPLITS."""
    lut = {k: SPLITS.index(v) for k, v in mapping.items()}
    return np.array([lut[n] for n in names], dtype=np.int8)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else a FerlabError naming the config key."""
    if value not in choices:
        raise FerlabError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def require_path(path: Path, what: str, hint: str = "", folder: bool = False) -> Path:
    """The path if it exists as a file (or folder), or one clear error naming it."""
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise DataNotFound(f"{what} not found: {path} (no such {kind}{'; ' + hint if hint else ''})")
    return path


class Source(Protocol):
    """A reader of one file format. `read` parses and decodes everything once (its result is cached).

    Optional attributes the datamodule looks for: `finish(data) -> FERData` (cheap, setting-dependent steps
    applied after the cache: split roles, label modes), `test_splits` (metric prefix -> split name(s)) and
    `val_split` (the split that is the dataset's official validation set, default "val"). The cache uses
    `location() -> list[Path]` (what identifies the dataset; default: `files()`).
    """

    def files(self) -> list[Path]:
        """The user files this source reads, each found on disk (DataNotFound names a missing one); their size and
        mtime key the cache."""

    def settings(self) -> dict:
        """Decode settings that change the result (also part of the cache key)."""

    def prepare(self) -> None:
        """Make the files exist if this source can make them (only the synthetic one can)."""

    def read(self) -> FERData:
        """Parse and decode the files."""
