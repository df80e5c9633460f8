"""Image files decoded once into uint8 (N,C,S,S): any size and mode in, the configured size and channels out.

Files are opened read-only with Pillow. The header is read first and an image above `max_pixels` is refused
before any pixel is decoded (decompression bombs). An undecodable or truncated file is an error naming it,
or, with on_bad_sample=skip, left out, counted and named in the log. Decoding runs on a few threads.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferlab.data.progress import progress
from ferlab.errors import FerlabError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
DEFAULT_MAX_PIXELS = 40_000_000  # width * height; a 48x48 face set never comes near it
SHOW_BAD = 5  # how many skipped file names the log and meta list


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



def clamp_box(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """A face box (x, y, w, h) clamped to a width x height image, as (left, top, right, bottom); empty: BadImage."""
    x, y, w, h = (int(v) for v in box)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise BadImage(f"face box (x={x}, y={y}, w={w}, h={h}) lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def decode_image(path: Path, size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 box: Sequence[int] | None = None) -> np.ndarray:
    """One file to uint8 (channels, size, size): EXIF orientation applied, converted, resized (antialiased).

    box: (x, y, w, h) of the face in the image as displayed (after EXIF orientation), cropped (clamped to the
    image) before resizing; None: the whole image.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:  # opens "rb" and reads only the header
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(f"{w}x{h} = {w * h} pixels is above the cap of {max_pixels} "
                               "(data.source.max_pixels; a decompression bomb?)")
            crop, side = None, size
            if box is not None:  # in the displayed frame: width and height swap when EXIF turns the image
                full = (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)
                crop = clamp_box(box, *full)
                side = -(-size * max(w, h) // min(crop[2] - crop[0], crop[3] - crop[1]))  # face side >= size
            im.draft("L" if channels == 1 else "RGB", (side, side))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(im)
            if crop is not None:  # scaled to the drafted size
                sx, sy = im.size[0] / full[0], im.size[1] / full[1]
                x0, y0 = round(crop[0] * sx), round(crop[1] * sy)
                im = im.crop((x0, y0, max(round(crop[2] * sx), x0 + 1), max(round(crop[3] * sy), y0 + 1)))
            if im.mode.startswith("I;16"):  # 16-bit gray: keep the top 8 bits instead of clipping at 255
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
            im = im.convert("L" if channels == 1 else "RGB")
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
    """Decoded images uint8 (M,C,S,S) of the M good files, their positions in the input list, and the bad ones."""

    images: np.ndarray
    good: np.ndarray
    bad: list[tuple[str, str]] = field(default_factory=list)

    def bad_meta(self) -> dict:
        """Counts for metrics.json."""
        return {"count": len(self.bad), "first": [f"{p}: {r}" for p, r in self.bad[:SHOW_BAD]]}


def decode_images(paths: Sequence[Path], size: int, channels: int, *, on_bad_sample: str = "error",
                  max_pixels: int = DEFAULT_MAX_PIXELS, description: str = "decoding images",
                  boxes: np.ndarray | None = None) -> Decoded:
    """Decode every file (progress bar); on_bad_sample: error (raise, naming the file) or skip (leave it out).

    boxes: int (N, 4) face boxes (x, y, w, h), one per path, cropped (clamped to the image) before resizing;
    None: whole images.
    """
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    bad: list[tuple[str, str]] = []

    def one(i: int) -> tuple[int, str | None]:
        try:
            out[i] = decode_image(paths[i], size, channels, max_pixels, None if boxes is None else boxes[i])
            return i, None
        except BadImage as e:
            return i, str(e)

    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        with progress(description, len(paths)) as advance:
            for i, reason in pool.map(one, range(len(paths))):
                advance(1)
                if reason is None:
                    ok[i] = True
                elif on_bad_sample == "error":
                    raise FerlabError(f"{paths[i]}: cannot use this image ({reason}); "
                                      "data.source.on_bad_sample=skip leaves such files out")
                else:
                    bad.append((str(paths[i]), reason))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, do not decode the rest
    if bad:
        log.warning("skipped %d unusable image(s) (on_bad_sample=skip), e.g. %s", len(bad),
                    "; ".join(f"{p} ({r})" for p, r in bad[:SHOW_BAD]))
    good = np.flatnonzero(ok)
    return Decoded(images=out[good] if len(good) < len(paths) else out, good=good, bad=bad)
