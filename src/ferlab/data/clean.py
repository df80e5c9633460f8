"""Training-set cleaning (report 001): near-blank images and exact copies of validation/test images.

Both are decided on the uint8 pixels after the splits are final, so a duplicate between train and a
validation split carved out of train is found too. Counts are logged and returned for metrics.json.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ferlab.data.sources.base import check_choice

log = logging.getLogger(__name__)
DUPLICATE_POLICIES = ("keep", "drop")


@dataclass
class Cleaning:
    """What to remove from the train split.

    Args:
        min_std: drop training images whose pixel standard deviation (0-255 units, all channels) is below this;
            report 001 used 10 (blank, all-black or all-white images). None keeps them.
        duplicates: keep | drop training images that are exact copies of a validation or test image
            (always counted).
    """

    min_std: float | None = None
    duplicates: str = "keep"

    def __post_init__(self) -> None:
        check_choice("data.clean.duplicates", self.duplicates, DUPLICATE_POLICIES)


def pixel_std(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N,) standard deviation of each uint8 image's pixels, in 0-255 units (chunked: no (N,D) float copy)."""
    out = np.empty(len(images), dtype=np.float64)
    for s in range(0, len(images), chunk):
        part = images[s : s + chunk]
        out[s : s + chunk] = part.reshape(len(part), -1).std(1, dtype=np.float32)  # two-pass: float32 is enough
    return out


def image_digests(images: np.ndarray) -> list[bytes]:
    """A 16-byte BLAKE2 digest of each image's bytes (equal digests: identical pixels)."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return [hashlib.blake2b(row.data, digest_size=16).digest() for row in flat]


def clean_train(train: np.ndarray, others: Mapping[str, np.ndarray], cleaning: Cleaning) -> tuple[np.ndarray, dict]:
    """A keep-mask over the train images and the counts: low-std removed, duplicates per other split."""
    keep = np.ones(len(train), dtype=bool)
    report: dict = {"min_std": cleaning.min_std, "duplicates": cleaning.duplicates}
    if cleaning.min_std is not None:
        low = pixel_std(train) < cleaning.min_std
        keep &= ~low
        report["low_std_removed"] = int(low.sum())
    train_digests = image_digests(train)
    copies = np.zeros(len(train), dtype=bool)
    report["duplicates_of"] = {}
    for name, images in others.items():
        seen = set(image_digests(images))
        hit = np.fromiter((d in seen for d in train_digests), dtype=bool, count=len(train))
        report["duplicates_of"][name] = int(hit.sum())
        copies |= hit
    report["duplicates_in_train"] = int(copies.sum())
    if cleaning.duplicates == "drop":
        keep &= ~copies
    report["removed"] = int((~keep).sum())
    log.info("cleaning: %s", report)
    return keep, report
