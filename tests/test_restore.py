"""Rebuilding a network from a checkpoint alone, and the clear errors for files that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ferlab.checkpoints.restore import check_classes, restore
from ferlab.errors import FerlabError
from ferlab.tasks.train import run_train


@pytest.fixture
def trained(make_cfg):
    metrics = run_train(make_cfg("test=false", "logger=none", "trainer.limit_train_batches=2"))
    return Path(metrics["checkpoints"]["last"])


def test_restore_rebuilds_the_same_function(trained):
    r = restore(trained)
    assert r.class_names[1] == "disgust" and r.in_chans == 1 and r.image_size == 48
    assert len(r.mean) == 1 and r.std[0] > 0
    ckpt = torch.load(trained, weights_only=True, map_location="cpu")
    x = torch.rand(3, 1, 48, 48)
    from hydra.utils import instantiate

    net = instantiate(ckpt["hyper_parameters"]["config"]["model"])
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    net.eval()
    torch.testing.assert_close(r.net(r.normalize(x)), net(r.normalize(x)))
    assert not r.net.training


def test_missing_truncated_and_foreign_files_are_clear_errors(trained, tmp_path):
    with pytest.raises(FerlabError, match="checkpoint not found"):
        restore(tmp_path / "nope.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained.read_bytes()[:5000])
    with pytest.raises(FerlabError, match="cannot be loaded"):
        restore(cut)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(FerlabError, match="not a ferlab checkpoint"):
        restore(foreign)


def test_weights_that_do_not_fit_and_class_mismatch(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True, map_location="cpu")
    ckpt["hyper_parameters"]["config"]["model"]["width"] = 16
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(FerlabError, match="weights do not fit"):
        restore(bad)
    with pytest.raises(FerlabError, match="predicts 7 classes"):
        check_classes(restore(trained), 8, "data ferplus")


def test_pretrained_weights_are_not_fetched_again_when_restoring(trained, tmp_path, monkeypatch):
    """A run trained from model.pretrained=imagenet restores offline: the weights are the checkpoint's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    ckpt = torch.load(trained, weights_only=True, map_location="cpu")
    ckpt["hyper_parameters"]["config"]["model"]["pretrained"] = "imagenet"
    path = tmp_path / "from_imagenet.ckpt"
    torch.save(ckpt, path)
    r = restore(path)
    assert r.config["model"]["pretrained"] == "imagenet" and not (tmp_path / "empty_cache").exists()
