"""Image files decoded once into uint8 (N,C,S,S): any size and mode in, the configured size and channels out.

Files are opened read-only with Pillow. The header is read first and an image above `max_pixels` is refused
before any pixel is decoded (decompression bombs). An undecodable or truncated file is an error naming it,
or, with on_bad_sample=skip, left out, counted and named in the log.

Decoding fills a preallocated .npy (`ferlab.data.store`) chunk by chunk: with more than one decode worker a
pool of processes decodes the chunks, each writing its rows straight into the file, so neither the workers
nor the caller hold more than a chunk; the result is the file memory-mapped read-only. Same bytes whatever the
number of processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.data import store
from ferlab.data.progress import progress
from ferlab.errors import FerlabError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
DEFAULT_MAX_PIXELS = 40_000_000  # width * height; a 48x48 face set never comes near it
SHOW_BAD = 5  # how many skipped file names the log and meta list
CHUNK_BYTES = 4 << 20  # decoded bytes per chunk of work (a chunk's rows are written with one pwrite)
EXIF_ORIENTATION = 0x0112


class BadImage(ValueError):
    """A file that cannot be used as an image; the message says why."""


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, no pixel decoded; None when Pillow cannot read the header.

    Pillow refuses to open a file above twice its own MAX_IMAGE_PIXELS (179 megapixels) before its size can be
    asked; such a header is read again by the format's own reader (chosen by the extension), which has no cap.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError:
        Image.init()
        reader = Image.OPEN.get(Image.registered_extensions().get(path.suffix.lower(), ""))
        try:
            with reader[0](path) as im:
                return im.size
        except (TypeError, OSError, ValueError, SyntaxError):  # TypeError: no reader for the extension
            return None
    except (OSError, ValueError, SyntaxError):
        return None


def _face_region(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) clamped to a width x height image as (left, top, right, bottom); empty is a BadImage."""
    x, y, w, h = (int(v) for v in box)
    left, top, right, bottom = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if right <= left or bottom <= top:
        raise BadImage(f"face box (x={x}, y={y}, w={w}, h={h}) lies outside the {width}x{height} image")
    return left, top, right, bottom


def decode_image(path: Path, size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 box: Sequence[int] | None = None) -> np.ndarray:
    """One file to uint8 (channels, size, size): EXIF orientation applied, converted, resized (antialiased).

    box: (x, y, w, h) of the face in the image as displayed (after EXIF orientation), clamped to the image and
    cropped before resizing; None: the whole image.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:  # opens "rb" and reads only the header
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(f"{w}x{h} = {w * h} pixels is above the cap of {max_pixels} "
                               "(data.source.max_pixels; a decompression bomb?)")
            turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8) if box is not None else False
            shown = (h, w) if turned else (w, h)  # size as displayed
            region = None if box is None else _face_region(box, *shown)
            # JPEG: decode at a reduced scale that still leaves the face region at least `size` wide and high
            need = size if region is None else math.ceil(size * max(w, h) / min(region[2] - region[0], region[3] - region[1]))
            im.draft("L" if channels == 1 else "RGB", (need, need))
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16"):  # 16-bit gray: keep the top 8 bits instead of clipping at 255
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
            im = im.convert("L" if channels == 1 else "RGB")
            if region is not None:  # cropped first: no pixel outside the box reaches the resize
                sx, sy = im.size[0] / shown[0], im.size[1] / shown[1]  # the draft's reduction
                left, top = round(region[0] * sx), round(region[1] * sy)
                im = im.crop((left, top, max(round(region[2] * sx), left + 1), max(round(region[3] * sy), top + 1)))
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(f"{type(e).__name__}: {e}") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


@dataclass
class Decoded:
    """Decoded images uint8 (M,C,S,S) of the M good files, their positions in the input list, and the bad ones.

    `images` is the decoded .npy memory-mapped read-only (inside a cache build, the file the cache publishes).
    """

    images: np.ndarray
    good: np.ndarray
    bad: list[tuple[str, str]] = field(default_factory=list)

    def bad_meta(self) -> dict:
        """Counts for metrics.json."""
        return {"count": len(self.bad), "first": [f"{p}: {r}" for p, r in self.bad[:SHOW_BAD]]}


@dataclass
class _Chunk:
    """One unit of work: rows start..start+len(paths) of a staged file."""

    target: str
    offset: int
    start: int
    paths: list[str]
    boxes: list[tuple[int, int, int, int]] | None
    size: int
    channels: int
    max_pixels: int


def _decode_chunk(chunk: _Chunk) -> tuple[int, list[tuple[int, str]], np.ndarray, np.ndarray]:
    """Decode a chunk, write its rows (zeros for bad files) into the staged file; (start, bad, digests, std)."""
    rows = np.zeros((len(chunk.paths), chunk.channels, chunk.size, chunk.size), dtype=np.uint8)
    bad = []
    for i, path in enumerate(chunk.paths):
        try:
            box = None if chunk.boxes is None else chunk.boxes[i]
            rows[i] = decode_image(Path(path), chunk.size, chunk.channels, chunk.max_pixels, box)
        except BadImage as e:
            bad.append((chunk.start + i, str(e)))
    fd = os.open(chunk.target, os.O_WRONLY)
    try:
        store.write_rows(fd, chunk.offset, rows[0].nbytes, chunk.start, rows)
    finally:
        os.close(fd)
    digests, std = store.row_stats(rows)
    return chunk.start, bad, digests, std


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    # Pool.terminate() stops workers with SIGTERM: a forked worker inherits the parent's Python handler (a run's
    # pre-emption handler only sets a flag), which would keep it alive and hang terminate's join. The worker was
    # started with SIGTERM blocked (`_started_pool`), so one sent before this line waits here and then kills it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _started_pool(method: str, workers: int) -> Any:
    """A process pool whose workers begin with SIGTERM blocked until `_quiet_worker` makes it fatal again."""
    blocks = hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if blocks else None
    try:
        return multiprocessing.get_context(method).Pool(workers, initializer=_quiet_worker)
    finally:
        if blocks:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a SIGTERM meanwhile reaches this process now


def _run(chunks: list[_Chunk], workers: int) -> Iterator[tuple[int, list[tuple[int, str]], np.ndarray, np.ndarray]]:
    """Results of every chunk in order: in this process, or from a pool of `workers` processes."""
    workers = min(workers, len(chunks))
    if workers <= 1 or multiprocessing.current_process().daemon:  # a daemon process may not have children
        yield from map(_decode_chunk, chunks)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"  # fork: no re-imports
    pool = _started_pool(method, workers)
    try:
        yield from pool.imap(_decode_chunk, chunks)
        pool.close()
    finally:
        pool.terminate()  # an error or Ctrl-C: stop decoding the rest
        pool.join()


def _chunks(staged: store.Staged, paths: Sequence[Path], boxes: np.ndarray | None, size: int, channels: int,
            max_pixels: int, workers: int) -> list[_Chunk]:
    per = max(1, min(CHUNK_BYTES // staged.row_bytes, math.ceil(len(paths) / (8 * workers))))  # small tail
    box_list = None if boxes is None else [tuple(int(v) for v in b) for b in np.asarray(boxes).reshape(-1, 4)]
    return [_Chunk(str(staged.path), staged.offset, s, [str(p) for p in paths[s : s + per]],
                   None if box_list is None else box_list[s : s + per], size, channels, max_pixels)
            for s in range(0, len(paths), per)]


def decode_images(paths: Sequence[Path], size: int, channels: int, *, on_bad_sample: str = "error",
                  max_pixels: int = DEFAULT_MAX_PIXELS, description: str = "decoding images",
                  boxes: np.ndarray | None = None) -> Decoded:
    """Decode every file (progress bar); on_bad_sample: error (raise, naming the file) or skip (leave it out).

    boxes: (N, 4) int (x, y, w, h) face boxes, each cropped (clamped to its image) before resizing; None: whole
    images. Runs with the current build's decode workers (`ferlab.data.store.staging`).
    """
    if boxes is not None and np.shape(boxes) != (len(paths), 4):
        raise ValueError(f"boxes: expected shape ({len(paths)}, 4), got {np.shape(boxes)}")
    own = store.current_build() is None
    with store.staging() if own else contextlib.nullcontext():
        build = store.current_build()
        staged = store.stage((len(paths), channels, size, size))
        chunks = _chunks(staged, paths, boxes, size, channels, max_pixels, build.workers)
        bad: list[tuple[str, str]] = []
        ok = np.ones(len(paths), dtype=bool)
        with progress(description, len(paths), unit="images") as advance, \
                contextlib.closing(_run(chunks, build.workers)) as results:  # closed on an error: the pool stops
            for start, bad_rows, digests, std in results:
                staged.digests[start : start + len(std)], staged.std[start : start + len(std)] = digests, std
                advance(len(std))
                if bad_rows and on_bad_sample == "error":
                    i, reason = bad_rows[0]
                    raise FerlabError(f"{paths[i]}: cannot use this image ({reason}); "
                                      "data.source.on_bad_sample=skip leaves such files out")
                for i, reason in bad_rows:
                    ok[i] = False
                    bad.append((str(paths[i]), reason))
        good = np.flatnonzero(ok)
        if bad:
            log.warning("skipped %d unusable image(s) (on_bad_sample=skip), e.g. %s", len(bad),
                        "; ".join(f"{p} ({r})" for p, r in bad[:SHOW_BAD]))
            store.compact(staged, good)
        images = store.open_staged(staged, unlink=own)
    return Decoded(images=images, good=good, bad=bad)
