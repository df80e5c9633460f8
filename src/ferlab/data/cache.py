"""Decoded datasets cached on disk, the images as one uncompressed .npy memory-mapped for training.

One entry per (reader, location, decode settings) under the cache folder:

    <reader>-<slot>.npy   images uint8 (N,C,H,W), written in place by the decoders, opened with mmap_mode="r"
    <reader>-<slot>.npz   the manifest, written last: the key (the slot plus every input file's size and mtime),
                          the reader's meta, the .npy's size and mtime, and the small arrays (targets, split,
                          soft targets, valence/arousal, each image's BLAKE2 digest and pixel standard deviation)

Start-up reads the manifest (zip CRCs checked), compares the key, the .npy's size, mtime and header, and the
digests of a few dozen sampled rows: a stale entry (another key) or a corrupt one (truncated, edited, missing,
unreadable) is rebuilt and replaced, never trusted, without reading the whole file. A build holds a lock file,
so a second run waits and then maps what the first one wrote; it stages its files under hidden names and
publishes the .npy first and the manifest last, so a killed run or two runs at once never leave an entry that
passes the checks half-written. Entries of the previous format (one .npz holding the images) are rebuilt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ferlab.data import store
from ferlab.data.sources.base import FERData, Source
from ferlab.runs.io import atomic_write

log = logging.getLogger(__name__)
CACHE_VERSION = 3
SAMPLED_ROWS = 32  # rows whose digests every start-up checks
ARRAYS = ("targets", "split", "digests", "pixel_std")
OPTIONAL = ("soft_targets", "va")  # (N, ...) arrays a format may have


def _digest(obj: object) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_slot(source: Source, files: list[Path], version: int = CACHE_VERSION) -> str:
    """Hash of the reader, its location and its decode settings: which cache entry belongs to this source.

    The location is `source.location()` (a folder dataset's root, so adding an image replaces its entry
    instead of starting another) or, without it, the file paths.
    """
    kind = f"{type(source).__module__}.{type(source).__qualname__}"
    where = source.location() if hasattr(source, "location") else files
    return _digest([version, kind, [str(Path(f).resolve()) for f in where], source.settings()])


def cache_key(source: Source, files: list[Path] | None = None) -> str:
    """The slot plus every file's (size, mtime): changes whenever an input file does."""
    files = source.files() if files is None else files
    stats = np.array([(st.st_size, st.st_mtime_ns) for st in map(os.stat, files)], dtype=np.int64)  # (F, 2)
    return hashlib.sha1(cache_slot(source, files).encode() + stats.tobytes()).hexdigest()[:20]


@dataclasses.dataclass
class Entry:
    """The files of one cache entry."""

    folder: Path
    stem: str

    @property
    def images(self) -> Path:
        return self.folder / f"{self.stem}.npy"

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.stem}.npz"

    @property
    def lock(self) -> Path:
        return self.folder / f".{self.stem}.lock"


def cache_entry(source: Source, cache_dir: str | Path, files: list[Path] | None = None) -> Entry:
    """Where this source's cache entry lives."""
    files = source.files() if files is None else files
    return Entry(Path(cache_dir), f"{type(source).__name__.lower()}-{cache_slot(source, files)}")


def load_or_build(source: Source, cache_dir: str | Path | None, workers: int | None = None) -> FERData:
    """The source's data from the cache when the entry checks out, else decoded once (progress bar) and cached.

    workers: processes decoding images (None: one per CPU); it does not change a byte, so it is not in the key.
    Without a cache_dir the data is decoded into a temporary file each time.
    """
    if cache_dir is None:
        return _uncached(source, workers)
    files = source.files()
    key, entry = cache_key(source, files), cache_entry(source, cache_dir, files)
    data, why = _load(entry, key)
    if data is not None:
        return data
    entry.folder.mkdir(parents=True, exist_ok=True)
    with _locked(entry.lock):
        data, _ = _load(entry, key)  # another run may have written it while this one waited
        if data is not None:
            return data
        if why:
            log.warning("cache %s is %s; rebuilding it", entry.manifest, why)
        _build(source, entry, key, len(files), workers)
        _remove_legacy(source, entry.folder, files)
    data, why = _load(entry, key)
    if data is None:
        raise RuntimeError(f"cache {entry.manifest} failed its own check right after it was written: {why}")
    return data


def _build(source: Source, entry: Entry, key: str, nfiles: int, workers: int | None) -> None:
    for leftover in entry.folder.glob(f".{entry.stem}.*"):  # staged by a killed build (the lock is ours)
        if leftover != entry.lock:
            leftover.unlink(missing_ok=True)
    start = time.perf_counter()
    log.info("decoding %d file(s) once (the next run maps %s)", nfiles, entry.images)
    with store.staging(entry.folder, workers, prefix=f".{entry.stem}.") as build:
        data = source.read()
        staged = _staged_images(build, data.images)
        if not len(data.targets) == len(data.split) == staged.shape[0] or \
                any(getattr(data, a) is not None and len(getattr(data, a)) != staged.shape[0] for a in OPTIONAL):
            raise RuntimeError(f"{type(source).__name__}.read(): {staged.shape[0]} images but "
                               f"{len(data.targets)} targets and {len(data.split)} split codes")
        _publish(entry, key, data, staged)
    log.info("decoded %d images in %.1f s", len(data.targets), time.perf_counter() - start)


def _uncached(source: Source, workers: int | None) -> FERData:
    """Read without a cache folder: images in a temporary file (its name removed at once), row facts computed."""
    with store.staging(None, workers) as build:
        data = source.read()
        staged = _staged_images(build, data.images)
        images = store.open_staged(staged, unlink=True)
    return dataclasses.replace(data, images=images, digests=staged.digests, pixel_std=staged.std)


def _staged_images(build: store.Build, images: np.ndarray) -> store.Staged:
    """The staged file `images` maps (what decode_images returns), or a staged copy of any other array."""
    name = getattr(images, "filename", None)
    staged = build.staged.get(os.path.abspath(name)) if name else None
    if staged is not None and images.shape == staged.shape and images.flags.c_contiguous:
        return staged
    return store.copy_into_stage(images)


def _publish(entry: Entry, key: str, data: FERData, staged: store.Staged) -> None:
    """The .npy (flushed to disk) renamed into place, then the manifest written. `load_or_build` then opens the
    entry as every later run does (sampled rows read back against their digests) before it is used."""
    n = staged.shape[0]
    with open(staged.path, "rb") as f:
        os.fsync(f.fileno())
    os.replace(staged.path, entry.images)
    st = os.stat(entry.images)
    header = {"version": CACHE_VERSION, "key": key, "meta": data.meta, "n": n, "shape": list(staged.shape),
              "images": {"name": entry.images.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    arrays = {"targets": data.targets, "split": data.split, "digests": staged.digests, "pixel_std": staged.std}
    for name in OPTIONAL:
        if getattr(data, name) is not None:
            arrays[name] = getattr(data, name)
    blob = json.dumps(header, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    arrays["header"] = np.frombuffer(blob.encode(), dtype=np.uint8)
    atomic_write(entry.manifest, lambda tmp: np.savez(tmp, **arrays))


def _load(entry: Entry, key: str) -> tuple[FERData | None, str]:
    """The cached data (images memory-mapped), or None and why not ("" when there is no entry)."""
    if not entry.manifest.exists():
        return None, ""
    try:
        with np.load(entry.manifest, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            if header.get("version") != CACHE_VERSION or header.get("key") != key:
                return None, "stale (its source files or settings changed)"
            arrays = {name: z[name] for name in z.files if name != "header"}  # zip CRCs are checked on read
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError, UnicodeDecodeError):
        return None, "corrupt (unreadable manifest)"
    n = header.get("n")
    if any(len(arrays.get(a, ())) != n for a in ARRAYS) or any(len(arrays[a]) != n for a in OPTIONAL if a in arrays):
        return None, "corrupt (inconsistent manifest)"
    images, why = _open_images(entry.images, header, arrays["digests"])
    if images is None:
        return None, why
    return FERData(images=images, targets=arrays["targets"], split=arrays["split"], meta=header.get("meta", {}),
                   soft_targets=arrays.get("soft_targets"), va=arrays.get("va"), digests=arrays["digests"],
                   pixel_std=arrays["pixel_std"]), ""


def _open_images(path: Path, header: dict, digests: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The .npy mapped read-only if its size, mtime, header and sampled rows match the manifest."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "corrupt (its image file is missing)"
    recorded = header.get("images", {})
    if st.st_size != recorded.get("size"):
        return None, f"corrupt (its image file has {st.st_size} bytes, {recorded.get('size')} were written)"
    if st.st_mtime_ns != recorded.get("mtime_ns"):
        return None, "corrupt (its image file was modified after it was written)"
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None, "corrupt (unreadable image file)"
    if images.dtype != np.uint8 or list(images.shape) != header.get("shape"):
        return None, "corrupt (its image file holds another array)"
    if _sampled_mismatch(path, digests):
        return None, "corrupt (sampled images differ from their checksums)"
    return images, ""


def _sampled_mismatch(path: Path, digests: np.ndarray) -> bool:
    """Whether any of SAMPLED_ROWS evenly spread rows (first and last included) of the .npy at `path` differs from
    its digest (or cannot be read)."""
    if not len(digests):
        return False
    rows = np.unique(np.linspace(0, len(digests) - 1, SAMPLED_ROWS).round().astype(np.int64))
    try:
        found, _ = store.row_stats(store.read_rows(path, rows))
    except (OSError, ValueError):
        return True
    return not np.array_equal(found, digests[rows])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a run that builds the same entry waits); unlocked where flock is
    missing or refused. The kernel drops the lock when a killed process's file closes."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    created = not path.exists()
    with _lock_file(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another run is writing this cache entry; waiting for it (%s)", path.parent)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: build unlocked, publishing is still atomic
            pass
        try:
            yield
        except BaseException:  # a failed build (a full disk) leaves no empty lock file; a waiting run builds alone
            if created:
                path.unlink(missing_ok=True)
            raise


def _lock_file(path: Path) -> BinaryIO:
    """`path` opened for locking (created if missing); a full disk is the one-line disk-full error."""
    try:
        return open(path, "a+b")
    except OSError as e:
        from ferlab.errors import DiskFull
        from ferlab.runs.io import disk_full

        if disk_full(e, path.parent):
            raise DiskFull(f"no space left on device creating the cache lock {path}") from None
        raise


def _remove_legacy(source: Source, folder: Path, files: list[Path]) -> None:
    """Delete this source's entry of the previous format (one .npz with the images inside), now replaced."""
    old = folder / f"{type(source).__name__.lower()}-{cache_slot(source, files, version=2)}.npz"
    old.unlink(missing_ok=True)
