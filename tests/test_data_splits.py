"""Stratified hold-outs never come out empty: round(N x fraction) in total (at least 1 when N >= 2), spread over the
classes by largest remainder, every class keeping a training image; tiny folder sets now train."""

from __future__ import annotations

import numpy as np
import pytest

from ferlab.data.datamodule import FERDataModule
from ferlab.data.sources.folders import ImageFolders
from ferlab.data.splits import holdout_counts, stratified_holdout
from ferlab.data.synthetic import render
from ferlab.data.writers import write_image_folders
from ferlab.labels import FER2013


def test_holdout_total_is_rounded_once_and_spread_by_largest_remainder():
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = rng.integers(1, 30, rng.integers(1, 9))
        fraction = float(rng.uniform(0.01, 0.9))
        take = holdout_counts(counts, fraction, np.random.default_rng(1))
        n = int(counts.sum())
        assert take.sum() == min(max(round(n * fraction), 1 if n >= 2 else 0), n - len(counts))
        assert (take >= 0).all() and (take <= counts - 1).all()  # every class keeps a training image
        if (take < counts - 1).all():  # no class at its cap: each share is its quota rounded down or up
            quota = counts * take.sum() / n
            assert (np.abs(take - quota) < 1).all()
    np.testing.assert_array_equal(holdout_counts(np.array([100, 3, 1, 50]), 0.3, rng), [30, 1, 0, 15])


def test_tiny_classes_still_give_a_holdout_and_the_seed_decides_which():
    targets = np.repeat(np.arange(7), 4)  # 28 images, 4 per class: the old per-class rounding held out none
    picks = stratified_holdout(targets, 0.1, 0)
    assert len(picks) == 3 and len(set(targets[picks])) == 3
    np.testing.assert_array_equal(picks, stratified_holdout(targets, 0.1, 0))
    assert any(not np.array_equal(picks, stratified_holdout(targets, 0.1, s)) for s in range(1, 6))
    assert len(stratified_holdout(np.array([0, 1]), 0.1, 0)) == 0  # one image per class: nothing to spare
    assert len(stratified_holdout(np.array([3, 3]), 0.1, 0)) == 1  # N >= 2: at least one


@pytest.mark.parametrize("test_fraction, sizes", [
    (None, {"train": 25, "val": 3}),
    (0.1, {"train": 23, "val": 2, "test": 3}),  # test: round(2.8) of 28; val: round(2.5) of the 25 left
])
def test_a_28_image_folder_set_trains_with_val_fraction_0_1(tmp_path, test_fraction, sizes):
    labels = np.repeat(np.arange(7), 4)
    root = write_image_folders(tmp_path / "tiny", list(render(labels, seed=4)), labels, ["train"] * 28, FER2013)
    dm = FERDataModule(ImageFolders(str(root), FER2013, splits={"train": "train"}), name="tiny", num_classes=7,
                       class_names=FER2013, in_chans=1, image_size=48, split="random", val_fraction=0.1,
                       test_fraction=test_fraction, test_splits={"test": "test"} if test_fraction else None)
    dm.setup("fit")
    assert dm.sizes == sizes and (dm.class_counts >= 2).all()
