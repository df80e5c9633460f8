"""A split's images as row indices into one uint8 (N,C,H,W) array, usually the memory-mapped cache.

Splits, cleaning and concatenated test sets narrow the index, never the pixels; only a gather (a batch, a
chunk of an evaluation pass) reads rows, into a new tensor of just those rows. Reading a mapped file counts
the pages it maps into the process's resident memory, and recent kernels map whole large folios (up to 2 MB)
around every row touched, so a few hundred random rows map most of a file: a file larger than
KEEP_MAPPED_BYTES is gathered GATHER_GROUP rows at a time, its pages released from this process after each
group (the OS page cache keeps them for the next epoch), which keeps resident memory flat however large the set. A set pickles as its file's path and
index: DataLoader workers and DDP ranks map the same file instead of receiving copies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ferlab.data.store import release
from ferlab.errors import FerlabError

KEEP_MAPPED_BYTES = 128 << 20  # a mapped file up to this size simply stays mapped
GATHER_GROUP = 8  # rows gathered between two releases: at most a few folios mapped at a time


class _Pager:
    """Gathers rows of one memory-mapped array; for a large file, in groups, releasing its pages after each."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.active = getattr(array, "_mmap", None) is not None and array.nbytes > KEEP_MAPPED_BYTES

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (B, ...) copies of `rows` (positions in the array)."""
        if not self.active:
            return self.array[rows]
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=self.array.dtype)
        for start in range(0, len(rows), GATHER_GROUP):
            out[start : start + GATHER_GROUP] = self.array[rows[start : start + GATHER_GROUP]]
            release(self.array)
        return out


def _identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ImageSet:
    """Rows `index` (M,) of uint8 `array` (N,C,H,W). `images[key]` gathers rows into a uint8 tensor (key: int,
    slice, index array or tensor, bool mask over the M rows); `subset` narrows without reading."""

    def __init__(self, array: np.ndarray, index: np.ndarray | None = None, pager: _Pager | None = None) -> None:
        self.array = array
        self.index = np.arange(len(array), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
        self._pager = pager or _Pager(array)
        path = getattr(array, "filename", None)
        self._file = (path, _identity(path)) if path and os.path.exists(path) else None

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        where = self._file[0] if self._file else "memory"
        return f"ImageSet({len(self)} of {len(self.array)} rows {tuple(self.array.shape[1:])}, {where})"

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.array.shape[1:])

    def rows(self, key: Any) -> np.ndarray:
        """uint8 numpy rows of `key` (positions in this set), gathered from the array."""
        if isinstance(key, Tensor):
            key = key.cpu().numpy()
        rows = self.index[key]
        return self._pager.gather(rows) if rows.ndim else self._pager.gather(rows[None])[0]

    def __getitem__(self, key: Any) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.rows(key)))

    def split(self, size: int) -> Iterator[Tensor]:
        """Consecutive chunks of at most `size` rows, as tensors (an evaluation pass)."""
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """Consecutive chunks of at most `rows` rows, as numpy arrays (a statistics pass)."""
        for start in range(0, len(self), rows):
            yield self.rows(slice(start, start + rows))

    def subset(self, positions: Any) -> ImageSet:
        """The rows at `positions` (index array, tensor or bool mask over this set) as a new set; reads nothing."""
        if isinstance(positions, Tensor):
            positions = positions.cpu().numpy()
        return ImageSet(self.array, self.index[positions], self._pager)

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        """Several sets over the same array as one (e.g. test_public + test_private); reads nothing."""
        if any(s.array is not sets[0].array for s in sets):
            raise ValueError("ImageSet.concat: the sets come from different arrays")
        return ImageSet(sets[0].array, np.concatenate([s.index for s in sets]), sets[0]._pager)

    def __getstate__(self) -> dict:
        if self._file is not None and os.path.exists(self._file[0]) and _identity(self._file[0]) == self._file[1]:
            return {"file": self._file, "index": self.index}  # the receiver maps the same file
        return {"array": np.asarray(self.array), "index": self.index}

    def __setstate__(self, state: dict) -> None:
        if "file" in state:
            path, ident = state["file"]
            if not os.path.exists(path) or _identity(path) != ident:
                raise FerlabError(f"{path}: the cache file changed while this run was using it (another run "
                                  "rebuilt it?); start the run again")
            array = np.load(path, mmap_mode="r")
        else:
            array = state["array"]
        self.__init__(array, state["index"])
