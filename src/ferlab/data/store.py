"""Decoded images as uncompressed .npy files: preallocated, written row by row, read back memory-mapped.

A build (the cache filling one entry, or a reader called on its own) stages its arrays as hidden files beside
where they will live; decoders `pwrite` finished rows into them, so no process holds the whole set. Every
staged row also gets a 16-byte BLAKE2 digest and its pixel standard deviation, computed while the row is in
hand: the cache checks sampled rows against the digests, and cleaning (duplicates, near-blank images) reads
only these per-row facts instead of the images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferlab.errors import DiskFull
from ferlab.runs.io import current_umask

DIGEST_BYTES = 16
COPY_BYTES = 16 << 20  # rows moved or hashed per step of a chunked pass over a staged file


def default_workers() -> int:
    """Processes decoding images when data.decode_workers is null: the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def row_stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 16) uint8 BLAKE2 digests and (B,) float32 pixel standard deviations (0-255 units) of uint8 rows."""
    flat = np.ascontiguousarray(rows).reshape(len(rows), -1)
    digests = np.frombuffer(b"".join(hashlib.blake2b(r.data, digest_size=DIGEST_BYTES).digest() for r in flat),
                            dtype=np.uint8).reshape(len(rows), DIGEST_BYTES)
    n = max(1, flat.shape[1])
    mean = flat.sum(1, dtype=np.uint64) / n  # exact integer sums: no (B, D) float copy
    square = np.square(flat, dtype=np.uint16).sum(1, dtype=np.uint64) / n
    return digests, np.sqrt(np.maximum(square - mean * mean, 0)).astype(np.float32)


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy (1.0) header of a C-ordered uint8 array; numpy pads it so the first axis can change in place."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file; ValueError when it is not one (or not C-ordered)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError("Fortran-ordered array")
        return tuple(shape), dtype, f.tell()


@dataclass
class Staged:
    """A .npy being written: uint8 `shape` from byte `offset`, and each row's digest (N, 16) and std (N,)."""

    path: Path
    shape: tuple[int, ...]
    offset: int
    digests: np.ndarray
    std: np.ndarray

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:]))


@dataclass
class Build:
    """Where a build stages its files and how many processes decode; `staged` maps a path to its row facts."""

    folder: Path
    prefix: str
    workers: int
    staged: dict[str, Staged] = field(default_factory=dict)


_BUILD: ContextVar[Build | None] = ContextVar("ferlab_build", default=None)


@contextlib.contextmanager
def staging(folder: str | Path | None = None, workers: int | None = None, prefix: str = ".ferlab-") -> Iterator[Build]:
    """Stage decoded arrays in `folder` (default: the temporary folder) with `workers` decoding processes.

    Files staged here and not moved away (published) by the end are removed, also after an error.
    """
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    build = Build(folder, prefix, max(1, int(workers)) if workers else default_workers())
    token = _BUILD.set(build)
    try:
        yield build
    finally:
        _BUILD.reset(token)
        for path in build.staged:
            Path(path).unlink(missing_ok=True)


def current_build() -> Build | None:
    """The build staging arrays now, if any."""
    return _BUILD.get()


def stage(shape: tuple[int, ...]) -> Staged:
    """A new preallocated .npy of uint8 `shape` in the current build's folder (zeros until rows are written).

    Outside a build the file goes to the temporary folder (`open_staged(..., unlink=True)` removes its name).
    """
    build = current_build()
    folder, prefix = (build.folder, build.prefix) if build else (Path(tempfile.gettempdir()), ".ferlab-")
    need = int(np.prod(shape)) + 4096
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DiskFull(f"{folder}: no space for the decoded images ({need / 1e9:.2f} GB needed, {free / 1e9:.2f} GB "
                       "free); free some space or point paths.cache_dir elsewhere")
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".npy", dir=folder)
    name = os.path.abspath(name)
    header = npy_header(shape)
    try:
        os.write(fd, header)
        os.ftruncate(fd, len(header) + int(np.prod(shape)))  # sparse: the filesystem allocates as rows land
    finally:
        os.close(fd)
    os.chmod(name, 0o666 & ~current_umask())  # mkstemp makes 0600; the published cache gets the usual permissions
    staged = Staged(Path(name), tuple(shape), len(header), np.zeros((shape[0], DIGEST_BYTES), np.uint8),
                    np.zeros(shape[0], np.float32))
    if build is not None:
        build.staged[name] = staged
    return staged


def write_rows(fd: int, staged_offset: int, row_bytes: int, start: int, rows: np.ndarray) -> None:
    """Write uint8 rows (B, ...) at row `start` of an open staged file."""
    data = memoryview(np.ascontiguousarray(rows)).cast("B")
    done, at = 0, staged_offset + start * row_bytes
    while done < len(data):  # a write may take less than asked
        if hasattr(os, "pwrite"):
            done += os.pwrite(fd, data[done:], at + done)
        else:  # Windows: each decoding process has its own descriptor, so seek + write is safe
            os.lseek(fd, at + done, os.SEEK_SET)
            done += os.write(fd, data[done:])


def copy_into_stage(images: np.ndarray) -> Staged:
    """Any uint8 (N, C, H, W) array (e.g. parsed from a CSV) copied into a new staged file, row facts included."""
    staged = stage(tuple(images.shape))
    step = max(1, COPY_BYTES // max(1, staged.row_bytes))
    fd = os.open(staged.path, os.O_WRONLY)
    try:
        for s in range(0, len(images), step):
            rows = np.asarray(images[s : s + step])
            staged.digests[s : s + step], staged.std[s : s + step] = row_stats(rows)
            write_rows(fd, staged.offset, staged.row_bytes, s, rows)
    finally:
        os.close(fd)
    return staged


def compact(staged: Staged, good: np.ndarray) -> None:
    """Keep only rows `good` (sorted positions), moved down in place; the header and size shrink to match."""
    shape = (len(good), *staged.shape[1:])
    header = npy_header(shape)
    if len(header) != staged.offset:  # numpy pads for a changing first axis; a copy if it ever does not
        raise RuntimeError(f"npy header of {shape} is {len(header)} bytes, not {staged.offset}")
    step = max(1, COPY_BYTES // max(1, staged.row_bytes))
    array = np.memmap(staged.path, np.uint8, "r+", staged.offset, staged.shape)
    for s in range(0, len(good), step):  # good[k] >= k: a row is read before anything overwrites it
        rows = good[s : s + step]
        array[s : s + len(rows)] = array[rows]
        release(array)
    array.flush()
    del array
    with open(staged.path, "r+b") as f:
        f.write(header)
        f.truncate(staged.offset + len(good) * staged.row_bytes)
    staged.shape, staged.digests, staged.std = shape, staged.digests[good], staged.std[good]


def read_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """Rows of a .npy read with pread, without mapping the file (a spot check maps nothing into this process)."""
    shape, _, offset = read_npy_header(path)
    row_bytes = int(np.prod(shape[1:]))
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = [os.pread(fd, row_bytes, offset + int(r) * row_bytes) for r in rows]
    finally:
        os.close(fd)
    if any(len(p) != row_bytes for p in parts):
        raise ValueError(f"{path}: shorter than its header says")
    return np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(len(parts), *shape[1:])


def open_staged(staged: Staged, unlink: bool = False) -> np.memmap:
    """The staged file read-only and memory-mapped; `unlink` removes its name (the mapping stays valid)."""
    array = np.load(staged.path, mmap_mode="r")
    if unlink:
        staged.path.unlink()
    return array


def release(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set (the OS page cache keeps them).

    Reading a mapped file counts its pages into the process's RSS; releasing after a pass keeps that figure to
    what is really held. A no-op for in-memory arrays and where madvise is missing.
    """
    mapped = getattr(array, "_mmap", None)
    while mapped is None and isinstance(getattr(array, "base", None), np.ndarray):
        array = array.base
        mapped = getattr(array, "_mmap", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(ValueError, OSError):  # closed, or a platform refusing it
            mapped.madvise(mmap.MADV_DONTNEED)
