"""Which rows validate and test: the dataset's official splits, or stratified seeded splits carved from train.

Applied after the cache (cheap), so changing the policy, fraction or seed never re-decodes anything.
"""

from __future__ import annotations

import logging

import numpy as np

from ferlab.data.sources.base import DROPPED, SPLITS, check_choice
from ferlab.errors import FerlabError

log = logging.getLogger(__name__)
POLICIES = ("official", "random")


def holdout_counts(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """How many of each class's `counts` to hold out: round(N x fraction) in total (at least 1 when N >= 2),
    spread by largest remainder (ties broken by `rng`), every class keeping at least one image."""
    n, room = int(counts.sum()), counts - 1
    total = min(max(round(n * fraction), 1 if n >= 2 else 0), int(room.sum()))
    quota = counts * total / max(n, 1)
    take = np.minimum(np.floor(quota).astype(np.int64), room)
    order = np.lexsort((rng.permutation(len(counts)), -(quota - np.floor(quota))))  # largest remainder first
    while take.sum() < total:  # a class at its cap passes its turn on to the next remainder
        for c in order:
            if take.sum() < total and take[c] < room[c]:
                take[c] += 1
    return take


def stratified_holdout(targets: np.ndarray, fraction: float, seed: int | list[int]) -> np.ndarray:
    """Seeded, stratified positions (into `targets`, sorted) of a `fraction` held out, as `holdout_counts` says."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(targets, return_counts=True)
    perms = [rng.permutation(np.flatnonzero(targets == c)) for c in classes]  # drawn first: the old rule's stream
    take = holdout_counts(counts, fraction, rng)
    picks = [p[:k] for p, k in zip(perms, take.tolist(), strict=True)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def resolve_policy(split: str | None, val_fraction: float | None) -> tuple[str, float | None]:
    """data.split and data.val_fraction together: null split means random exactly when val_fraction is set."""
    policy = check_choice("data.split", split or ("random" if val_fraction else "official"), POLICIES)
    if policy == "official" and val_fraction:
        raise FerlabError("data.split=official uses the dataset's own validation split, but data.val_fraction is "
                          f"{val_fraction}; set data.split=random to carve validation from train, or val_fraction=null")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise FerlabError(f"data.val_fraction: expected a fraction in (0, 1), got {val_fraction}")
    return policy, (val_fraction or 0.1) if policy == "random" else None


def assign_splits(split: np.ndarray, targets: np.ndarray, *, name: str, policy: str, val_fraction: float | None,
                  test_fraction: float | None, val_split: str | None, seed: int) -> tuple[np.ndarray, str, dict]:
    """Final split codes (DROPPED for unused rows), the split name that validates, and notes for the meta.

    official: validation is the source's `val_split` (e.g. FER2013's PublicTest). random: a stratified, seeded
    `val_fraction` of train; a val split the source has is then left out. test_fraction carves a test split
    from train first (for sources without a labelled test set, e.g. train.csv).
    """
    split = split.astype(np.int16).copy()
    train_code, val_code, test_code = (SPLITS.index(s) for s in ("train", "val", "test"))
    notes: dict = {"policy": policy}
    if test_fraction is not None:
        if not 0 < test_fraction < 1:
            raise FerlabError(f"data.test_fraction: expected a fraction in (0, 1), got {test_fraction}")
        if (split == test_code).any():
            raise FerlabError(f"data {name!r} already has a test split ({int((split == test_code).sum())} rows); "
                              "data.test_fraction is for sources without one: set it to null")
        train = np.flatnonzero(split == train_code)
        split[train[stratified_holdout(targets[train], test_fraction, [seed, 1])]] = test_code
        notes["test_fraction"] = test_fraction
    if policy == "official":
        if val_split is None or not (split == SPLITS.index(val_split)).any():
            raise FerlabError(f"data {name!r} has no official validation split{_val_hint(val_split)}; use "
                              "data.split=random to carve one out of train (data.val_fraction, default 0.1)")
        return split, val_split, notes
    if (split == val_code).any():
        notes["unused_val_rows"] = int((split == val_code).sum())
        log.info("data %s: split=random carves validation from train; the source's own %d validation rows are "
                 "not used", name, notes["unused_val_rows"])
        split[split == val_code] = DROPPED
    train = np.flatnonzero(split == train_code)
    split[train[stratified_holdout(targets[train], val_fraction, seed)]] = val_code
    notes["val_fraction"] = val_fraction
    return split, "val", notes


def _val_hint(val_split: str | None) -> str:
    return "" if val_split is None else f" (no {val_split!r} rows)"
