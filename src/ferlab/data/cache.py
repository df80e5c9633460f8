"""Decoded datasets cached on disk as .npz, keyed on the source files' size and mtime and the decode settings.

One cache file per (reader, file paths, decode settings): `<reader>-<slot>.npz`. Its header stores the key
(also over every file's size and mtime); a cache whose key differs (a file changed) is stale, and one that is
unreadable, truncated or fails its CRC is corrupt: both are rebuilt and replaced, never trusted. Writes are
atomic, so a killed run or two runs at once never leave a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np

from ferlab.data.io import atomic_write
from ferlab.data.sources.base import FERData, Source

log = logging.getLogger(__name__)
CACHE_VERSION = 2


def _digest(obj: object) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_slot(source: Source, files: list[Path]) -> str:
    """Hash of the reader, its location and its decode settings: which cache file belongs to this source.

    The location is `source.location()` (a folder dataset's root, so adding an image replaces its cache
    instead of starting another) or, without it, the file paths.
    """
    kind = f"{type(source).__module__}.{type(source).__qualname__}"
    where = source.location() if hasattr(source, "location") else files
    return _digest([CACHE_VERSION, kind, [str(Path(f).resolve()) for f in where], source.settings()])


def cache_key(source: Source, files: list[Path] | None = None) -> str:
    """The slot plus every file's (size, mtime): changes whenever an input file does."""
    files = source.files() if files is None else files
    stats = [(st.st_size, st.st_mtime_ns) for st in (Path(f).stat() for f in files)]
    return _digest([cache_slot(source, files), stats])


def cache_path(source: Source, cache_dir: str | Path, files: list[Path] | None = None) -> Path:
    """Where this source's cache lives."""
    files = source.files() if files is None else files
    return Path(cache_dir) / f"{type(source).__name__.lower()}-{cache_slot(source, files)}.npz"


def load_or_build(source: Source, cache_dir: str | Path | None) -> FERData:
    """The source's data from the cache when it is valid, else read once (progress bar) and cache it."""
    if cache_dir is None:
        return source.read()
    files = source.files()
    key, path = cache_key(source, files), cache_path(source, cache_dir, files)
    if path.exists():
        data, why = _load(path, key)
        if data is not None:
            return data
        log.warning("cache %s is %s; rebuilding it", path, why)
    start = time.perf_counter()
    log.info("decoding %d file(s) once (the next run loads %s)", len(files), path)
    data = source.read()
    _save(path, key, data)
    log.info("decoded %d images in %.1f s", len(data.targets), time.perf_counter() - start)
    return data


def _save(path: Path, key: str, data: FERData) -> None:
    arrays = {"images": data.images, "targets": data.targets, "split": data.split}
    if data.soft_targets is not None:
        arrays["soft_targets"] = data.soft_targets
    header = {"key": key, "meta": data.meta, "n": len(data.targets)}
    blob = json.dumps(header, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    arrays["header"] = np.frombuffer(blob.encode(), dtype=np.uint8)

    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def _load(path: Path, key: str) -> tuple[FERData | None, str]:
    """The cached data, or None and why not (stale: another key; corrupt: unreadable or inconsistent)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            if header.get("key") != key:
                return None, "stale (its source files or settings changed)"
            images, targets, split = z["images"], z["targets"], z["split"]  # zip CRCs are checked on read
            soft = z["soft_targets"] if "soft_targets" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError, UnicodeDecodeError):
        return None, "corrupt (unreadable)"
    n = header.get("n")
    shapes_ok = images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(targets) == len(split) == n
    if not shapes_ok or (soft is not None and len(soft) != n):
        return None, "corrupt (inconsistent arrays)"
    return FERData(images=images, targets=targets, split=split, soft_targets=soft, meta=header.get("meta", {})), ""
