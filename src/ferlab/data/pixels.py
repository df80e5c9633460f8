"""FER2013's pixel strings ("70 80 82 ...") to uint8 arrays and back, vectorized over bytes.

Parsing works on the raw bytes of many rows at once (no Python object per pixel): a row with the wrong
count, a non-integer or a value outside 0-255 raises `PixelError` with the index of the first bad row.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SPACE, ZERO, NINE = 32, 48, 57
CHUNK_ROWS = 2048  # rows per vectorized pass; keeps the int64 temporaries near 40 MB


class PixelError(ValueError):
    """A bad pixel row: `row` is its index among the strings passed in, `reason` says what is wrong."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"row {row}: {reason}")
        self.row, self.reason = row, reason


def parse_pixel_strings(pixels: list[str], count: int, on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """Parse N pixel strings of `count` values each into uint8 (N, count).

    Chunks run on a few threads (numpy releases the GIL); the first bad row in file order is reported.
    `on_chunk(rows)` is called as chunks finish (a progress bar).
    """
    out = np.empty((len(pixels), count), dtype=np.uint8)
    starts = range(0, len(pixels), CHUNK_ROWS)

    def work(start: int) -> int:
        out[start : start + CHUNK_ROWS] = _parse_chunk(pixels[start : start + CHUNK_ROWS], count, start)
        return min(CHUNK_ROWS, len(pixels) - start)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for done in pool.map(work, starts):  # in order: an earlier chunk's error is raised first
            if on_chunk is not None:
                on_chunk(done)
    return out


def _parse_chunk(rows: list[str], count: int, first: int) -> np.ndarray:
    lengths = np.fromiter((len(r) + 1 for r in rows), dtype=np.int64, count=len(rows))
    row_end = np.cumsum(lengths)  # offset just past each row's separator, counting the leading space
    try:
        b = np.frombuffer(b" " + " ".join(rows).encode("ascii") + b" ", dtype=np.uint8)
    except UnicodeEncodeError as e:
        raise PixelError(first + int(np.searchsorted(row_end, e.start + 1, "right")), "non-ASCII character") from None
    digit = (b >= ZERO) & (b <= NINE)
    bad = np.flatnonzero(~digit & (b != SPACE))
    if len(bad):
        r = int(np.searchsorted(row_end, bad[0], "right"))
        token = _token_at(rows[r], int(bad[0] - 1 - (row_end[r] - lengths[r])))
        raise PixelError(first + r, f"pixel value {token!r} is not an integer")
    starts = np.flatnonzero(digit[1:] & ~digit[:-1]) + 1  # b[0] is a space: " " is prepended
    ends = np.flatnonzero(digit[:-1] & ~digit[1:])  # last byte of every token
    per_row = np.diff(np.searchsorted(starts, np.append(row_end - lengths + 1, len(b))))
    wrong = np.flatnonzero(per_row != count)
    if len(wrong):
        r = int(wrong[0])
        raise PixelError(first + r, f"pixels has {per_row[r]} values, expected {count}")
    return _token_values(b, starts, ends, first, count)


def _token_values(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, first: int, count: int) -> np.ndarray:
    """Decimal value of every token from its last three digits; a longer token is out of range."""
    places = ends - starts + 1  # 1..3 digits for 0..255
    d = b.astype(np.int16) - ZERO
    values = d[ends] + 10 * d[ends - 1] * (places >= 2) + 100 * d[ends - 2] * (places >= 3)
    big = np.flatnonzero((values > 255) | (places > 3))
    if len(big):
        i = int(big[0])
        text = b[starts[i] : ends[i] + 1].tobytes().decode()
        raise PixelError(first + i // count, f"pixel value {text} outside 0-255")
    return values.astype(np.uint8).reshape(-1, count)


def _token_at(row: str, offset: int) -> str:
    """The whitespace-delimited token of `row` that covers character `offset`."""
    left = row.rfind(" ", 0, offset) + 1
    right = row.find(" ", offset)
    return row[left : right if right >= 0 else len(row)]


def format_pixel_rows(images: np.ndarray) -> list[str]:
    """uint8 (N, ...) images into N space-separated decimal strings, FER2013's `pixels` format."""
    flat = images.reshape(len(images), -1)
    lut = np.zeros((256, 4), dtype=np.uint8)  # "7  ", "70 ", "255" left-aligned, then a space
    width = np.array([len(str(i)) for i in range(256)])
    for i in range(256):
        lut[i, : width[i]] = np.frombuffer(str(i).encode(), dtype=np.uint8)
    lut[np.arange(256), width] = SPACE
    keep = np.arange(4)[None, :] <= width[:, None]  # digits plus one separator per value
    rows = []
    for start in range(0, len(flat), CHUNK_ROWS):
        part = flat[start : start + CHUNK_ROWS]
        text = lut[part][keep[part]].tobytes().decode("ascii")
        ends = np.cumsum((width[part] + 1).sum(1))  # each row ends with a trailing space
        rows.extend(text[a : b - 1] for a, b in zip(np.concatenate([[0], ends[:-1]]).tolist(), ends.tolist(), strict=False))
    return rows
