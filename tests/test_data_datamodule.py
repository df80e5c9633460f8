"""FERDataModule: split policies, test sets and their metric prefixes, cleaning, class weights, balanced
sampling, normalization "auto", and what reaches metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlab.data.clean import Cleaning
from ferlab.data.datamodule import FERDataModule
from ferlab.data.sources.fer2013 import Fer2013Csv
from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv
from ferlab.data.writers import write_train_test_csvs
from ferlab.errors import FerlabError
from ferlab.labels import FER2013


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    images, labels, usage = make_dataset(SynthSpec(num_images=400, seed=4), cover_classes=True)
    return {"csv": write_fer2013_csv(root / "fer2013.csv", images, labels, usage), "root": root,
            "images": images, "labels": labels, "usage": usage}


def _dm(path, tmp_path, test="private", **kw) -> FERDataModule:
    dm = FERDataModule(Fer2013Csv(str(path), test=test), name="fer2013", num_classes=7, class_names=FER2013,
                       in_chans=1, image_size=48, batch_size=32, cache_dir=str(tmp_path / "cache"), **kw)
    dm.setup("fit")
    return dm


def test_official_split_uses_publictest_to_validate_and_privatetest_to_test(faces, tmp_path):
    dm = _dm(faces["csv"], tmp_path)
    assert dm.sizes == {"train": 320, "val": 40, "test": 40} and dm.test_splits == {"test": "test"}
    public = faces["images"][faces["usage"] == "PublicTest"]
    np.testing.assert_array_equal(dm.splits["val"][0][:].numpy()[:, 0], public)


def test_both_test_halves_are_reported_under_their_own_prefixes(faces, tmp_path):
    dm = _dm(faces["csv"], tmp_path, test="both")
    assert dm.test_splits == {"test_public": "test_public", "test_private": "test_private"}
    assert [len(dl.dataset) for dl in dm.test_dataloader()] == [40, 40]
    assert dm.splits["val"] is dm.splits["test_public"]  # official: PublicTest also validates


def test_random_split_is_stratified_seeded_and_leaves_publictest_out(faces, tmp_path):
    a = _dm(faces["csv"], tmp_path, val_fraction=0.25, seed=1)
    b = _dm(faces["csv"], tmp_path, val_fraction=0.25, seed=1)
    c = _dm(faces["csv"], tmp_path, val_fraction=0.25, seed=2)
    assert a.sizes["train"] + a.sizes["val"] == 320 and a.sizes["test"] == 40
    assert a.meta["splits"] == {"policy": "random", "unused_val_rows": 40, "val_fraction": 0.25}
    torch.testing.assert_close(a.splits["val"][0][:], b.splits["val"][0][:])
    assert not torch.equal(a.splits["val"][0][:], c.splits["val"][0][:])
    train_share = np.bincount(faces["labels"][faces["usage"] == "Training"], minlength=7) / 320
    val_share = a.splits["val"][1].bincount(minlength=7).numpy() / a.sizes["val"]
    assert np.abs(train_share - val_share).max() < 0.04  # per-class fractions: stratified


def test_merged_test_set_of_both_halves_as_report_001(faces, tmp_path):
    dm = _dm(faces["csv"], tmp_path, test="merged", split="random", val_fraction=0.2)
    assert dm.sizes["test"] == 80 and dm.sizes["train"] + dm.sizes["val"] == 320
    with pytest.raises(FerlabError, match="has no official validation split; use data.split=random"):
        _dm(faces["csv"], tmp_path, test="merged")


def test_train_csv_needs_carved_validation_and_test(faces, tmp_path):
    train_csv, _ = write_train_test_csvs(tmp_path, faces["images"], faces["labels"], faces["usage"])
    with pytest.raises(FerlabError, match=r"has no official validation split \(no 'val' rows\); use data.split=random"):
        _dm(train_csv, tmp_path)
    with pytest.raises(FerlabError, match=r"the 'test' split is empty .*data.test_fraction a test split"):
        _dm(train_csv, tmp_path, split="random")
    dm = _dm(train_csv, tmp_path, split="random", val_fraction=0.2, test_fraction=0.1)
    assert sum(dm.sizes.values()) == 320 and abs(dm.sizes["test"] - 32) <= 4 and abs(dm.sizes["val"] - 58) <= 6


def test_split_options_are_checked():
    src = Fer2013Csv("x.csv")
    kw = dict(name="x", num_classes=7, class_names=FER2013, in_chans=1, image_size=48)
    with pytest.raises(FerlabError, match="data.split=official uses the dataset's own validation split"):
        FERDataModule(src, split="official", val_fraction=0.2, **kw)
    with pytest.raises(FerlabError, match="data.split: expected one of official, random, got 'kfold'"):
        FERDataModule(src, split="kfold", **kw)
    with pytest.raises(FerlabError, match="data.clean.duplicates: expected one of keep, drop"):
        FERDataModule(src, clean={"duplicates": "maybe"}, **kw)


def test_cleaning_drops_blank_images_and_counts_duplicates(faces, tmp_path):
    images, labels, usage = faces["images"].copy(), faces["labels"], faces["usage"]
    images[[0, 5, 9]] = 128  # blank
    images[10] = np.random.default_rng(0).integers(0, 3, (48, 48), dtype=np.uint8) + 120  # low std, not blank
    test_rows = np.flatnonzero(usage == "PrivateTest")
    images[[20, 21]] = images[test_rows[:2]]  # two training copies of test images
    csv = write_fer2013_csv(tmp_path / "dirty.csv", images, labels, usage)
    keep = _dm(csv, tmp_path, clean=Cleaning(min_std=10))
    assert keep.meta["clean"]["low_std_removed"] == 4 and keep.meta["clean"]["duplicates_of"] == {"val": 0, "test": 2}
    assert keep.sizes["train"] == 316
    drop = _dm(csv, tmp_path, clean=Cleaning(min_std=None, duplicates="drop"))
    assert drop.sizes["train"] == 318 and drop.meta["clean"]["removed"] == 2


def test_class_weights_are_inverse_frequency_and_the_balanced_sampler_evens_classes(faces, tmp_path):
    dm = _dm(faces["csv"], tmp_path, sampler="balanced")
    counts = dm.class_counts.double()
    w = dm.class_weights()
    torch.testing.assert_close(w.double(), counts.sum() / (7 * counts), rtol=1e-6, atol=0)
    assert torch.argmax(w) == torch.argmin(counts) and (w * counts).std() / (w * counts).mean() < 1e-6
    torch.manual_seed(0)
    drawn = torch.cat([y for _ in range(8) for _, y in dm.train_dataloader()]).bincount(minlength=7).double()
    assert drawn.min() / drawn.max() > 0.6 and counts.min() / counts.max() < 0.2


def test_auto_normalization_is_measured_on_train_in_model_space(faces, tmp_path):
    dm = _dm(faces["csv"], tmp_path, mean="auto", std="auto")
    x = dm.splits["train"][0][:].double() / 255
    assert dm.mean.flatten().item() == pytest.approx(x.mean().item(), abs=1e-4)
    assert dm.std.flatten().item() == pytest.approx(x.std().item(), abs=1e-3)
    batch = dm.transform(dm.splits["train"][0][:256], train=False)
    assert abs(batch.mean().item()) < 0.15 and abs(batch.std().item() - 1) < 0.15
    rgb = FERDataModule(Fer2013Csv(str(faces["csv"])), name="x", num_classes=7, class_names=FER2013, in_chans=3,
                        image_size=64, mean="auto", std="auto", cache_dir=str(tmp_path / "cache"))
    rgb.setup("fit")
    assert rgb.mean.shape == (1, 3, 1, 1) and rgb.transform(rgb.splits["val"][0][:4], train=False).shape == (4, 3, 64, 64)


@pytest.mark.slow
def test_dataset_meta_and_per_split_metrics_reach_metrics_json(make_cfg, faces):
    from ferlab.tasks.train import run_train

    cfg = make_cfg("data=fer2013", f"data.source.csv_path={faces['csv']}", "data.source.test=both",
                   "data.clean.min_std=10", "augment=report001", "data.batch_size=64", "model.width=8",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
                   "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null", fast=False)
    run_train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert {"test_public/acc", "test_private/acc", "test_public/f1_macro", "test_private/f1/happy"} <= set(metrics["test"])
    meta = metrics["dataset"]["meta"]
    assert meta["clean"]["min_std"] == 10 and meta["file_splits"] == {"train": 320, "test_public": 40, "test_private": 40}
    assert metrics["dataset"]["sizes"]["test_private"] == 40
