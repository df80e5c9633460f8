"""Decoded datasets cached on disk as .npz, keyed on the source files' size and mtime and the decode settings.

A second run loads the uint8 arrays instead of parsing again. A stale cache has another key and is never
found; a corrupt one (truncated, wrong arrays) is detected on load and rebuilt. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from ferlab.data.io import atomic_write
from ferlab.data.sources.base import FERData, Source

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def cache_key(source: Source) -> str:
    """Hash of the reader, its files' (path, size, mtime) and its decode settings."""
    files = []
    for f in source.files():
        st = Path(f).stat()
        files.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    kind = f"{type(source).__module__}.{type(source).__qualname__}"
    blob = json.dumps([CACHE_VERSION, kind, files, source.settings()], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def load_or_build(source: Source, cache_dir: str | Path | None) -> FERData:
    """The source's data from the cache when it is valid, else read once and cache it."""
    if cache_dir is None:
        return source.read()
    key = cache_key(source)
    path = Path(cache_dir) / f"{type(source).__name__.lower()}-{key}.npz"
    if path.exists():
        data = _load(path, key)
        if data is not None:
            return data
        log.warning("cache %s is corrupt or stale; rebuilding it", path)
    log.info("decoding %s once (the next run loads %s)", [str(f) for f in source.files()], path)
    data = source.read()
    _save(path, key, data)
    return data


def _save(path: Path, key: str, data: FERData) -> None:
    arrays = {"images": data.images, "targets": data.targets, "split": data.split}
    if data.soft_targets is not None:
        arrays["soft_targets"] = data.soft_targets
    arrays["header"] = np.frombuffer(json.dumps({"key": key, "meta": data.meta}).encode(), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _load(path: Path, key: str) -> FERData | None:
    """The cached data, or None when the file is unreadable, inconsistent or for another key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            if header.get("key") != key:
                return None
            images, targets, split = z["images"], z["targets"], z["split"]
            soft = z["soft_targets"] if "soft_targets" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError):
        return None
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(targets) != n or len(split) != n:
        return None
    return FERData(images=images, targets=targets, split=split, soft_targets=soft, meta=header.get("meta", {}))
