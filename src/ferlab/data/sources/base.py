"""What every source reader returns: decoded uint8 images, targets and split membership."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

# Split codes stored in FERData.split; a reader uses the ones its format has.
SPLITS = ("train", "val", "test", "test_public", "test_private")


@dataclass
class FERData:
    """A decoded dataset: images uint8 (N,C,H,W), targets int64 (N,), split codes int8 (N,) into SPLITS.

    `soft_targets` (N,K) float32 holds label distributions where the format has them (FER+ votes).
    `meta` carries counts worth logging (rows read, rows dropped and why).
    """

    images: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    soft_targets: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def indices(self, name: str) -> np.ndarray:
        """Row indices of one split."""
        return np.flatnonzero(self.split == SPLITS.index(name))

    def split_sizes(self) -> dict[str, int]:
        """Rows per split present in the data."""
        return {name: int((self.split == i).sum()) for i, name in enumerate(SPLITS) if (self.split == i).any()}


class Source(Protocol):
    """A reader of one file format. `read` parses and decodes everything once."""

    def files(self) -> list[Path]:
        """The user files this source reads (their size and mtime key the cache)."""

    def settings(self) -> dict:
        """Decode settings that change the result (also part of the cache key)."""

    def prepare(self) -> None:
        """Make the files exist if this source can make them (only the synthetic one can)."""

    def read(self) -> FERData:
        """Parse and decode the files."""
