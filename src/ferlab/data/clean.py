"""Training-set cleaning (report 001): near-blank images and exact copies of validation/test images.

Both are decided on the uint8 pixels after the splits are final, so a duplicate between train and a
validation split carved out of train is found too. Counts are logged and returned for metrics.json.
"""

from __future__ import annotations

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


def _keys(digests: np.ndarray) -> np.ndarray:
    """(N, 16) uint8 digests as (N,) 16-byte opaque values, comparable with numpy's set routines."""
    return np.ascontiguousarray(digests).view(np.dtype((np.void, digests.shape[1]))).ravel()


def clean_train(train: np.ndarray, others: Mapping[str, np.ndarray], cleaning: Cleaning, digests: np.ndarray,
                pixel_std: np.ndarray) -> tuple[np.ndarray, dict]:
    """A keep-mask over the train rows and the counts: low-std removed, duplicates per other split.

    train, others: row indices into the dataset; digests (N, 16) and pixel_std (N,) are its per-row facts
    (computed once when the images were decoded), so no image is read here.
    """
    keep = np.ones(len(train), dtype=bool)
    report: dict = {"min_std": cleaning.min_std, "duplicates": cleaning.duplicates}
    if cleaning.min_std is not None:
        low = pixel_std[train].astype(np.float64) < cleaning.min_std
        keep &= ~low
        report["low_std_removed"] = int(low.sum())
    train_keys = _keys(digests[train])
    copies = np.zeros(len(train), dtype=bool)
    report["duplicates_of"] = {}
    for name, rows in others.items():
        hit = np.isin(train_keys, _keys(digests[rows]))
        report["duplicates_of"][name] = int(hit.sum())
        copies |= hit
    report["duplicates_in_train"] = int(copies.sum())
    if cleaning.duplicates == "drop":
        keep &= ~copies
    report["removed"] = int((~keep).sum())
    log.info("cleaning: %s", report)
    return keep, report
