"""Checkpoints that cannot be written or do not fit: a full disk (the writer patched to fail with ENOSPC) and
resuming with another model's checkpoint are one line each; what was written before stays intact."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from ferlab.checkpoints.ckpt_file import load_checkpoint
from ferlab.checkpoints.mismatch import describe_mismatch
from ferlab.config.runner import guarded
from ferlab.errors import DiskFull, FerlabError
from ferlab.tasks.train import run_train
from tests.conftest import FAST


def _full_disk_at_epoch(monkeypatch, epoch: int) -> None:
    """torch.save writes part of any checkpoint of `epoch`, then fails as a full filesystem does."""
    save = torch.save

    def save_until_full(obj, f) -> None:
        if isinstance(obj, dict) and obj.get("epoch") == epoch:
            Path(f).write_bytes(bytes(50_000))
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, f)

    monkeypatch.setattr(torch, "save", save_until_full)


def test_full_disk_is_one_line_and_keeps_earlier_checkpoints(make_cfg, monkeypatch, capsys):
    _full_disk_at_epoch(monkeypatch, 1)
    cfg = make_cfg("trainer.max_epochs=2", "test=false")
    with pytest.raises(SystemExit) as info:
        guarded(run_train, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1, err
    assert err[0].startswith("ferlab: error: no space left on device writing ") and " MB needed, " in err[0]
    assert err[0].endswith(" MB free)")
    run = Path(cfg.paths.output_dir)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.ckpt", "last.ckpt"]  # epoch 0's, and no temporary file
    assert all(load_checkpoint(run / "checkpoints" / name)["epoch"] == 0 for name in ckpts)
    assert json.loads((run / "failed.json").read_text())["type"] == "DiskFull"


def test_failed_json_that_does_not_fit_is_skipped_silently(make_cfg, monkeypatch, capsys):
    def fail(cfg):
        raise DiskFull("no space left on device writing x.ckpt (about 3.0 MB needed, 0.0 MB free)")

    def no_room(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("ferlab.runs.runfiles.atomic_write_text", no_room)
    cfg = make_cfg()
    with pytest.raises(SystemExit) as info:
        guarded(fail, cfg)
    assert info.value.code == 1 and not (Path(cfg.paths.output_dir) / "failed.json").exists()
    assert capsys.readouterr().err.splitlines() == [
        "ferlab: error: no space left on device writing x.ckpt (about 3.0 MB needed, 0.0 MB free)"]


def test_resuming_another_models_checkpoint_is_one_line(make_cfg, ckpt, capsys):
    # `ckpt`: resnet18_small, width 8, on synthetic faces; this run builds LeNet-7
    fast = [o for o in FAST if not o.startswith("model.")]
    cfg = make_cfg(*fast, "model=lenet7", f"ckpt_path={ckpt}", fast=False)
    with pytest.raises(SystemExit) as info:
        guarded(run_train, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1, err
    assert f"checkpoint {ckpt} does not fit: it was trained with model=resnet18_small on data=synthetic" in err[0]
    assert "this run builds model=lenet7 on data=synthetic (7 classes, 1 channel, 48 px)" in err[0]
    assert err[0].endswith("use the overrides it was trained with: model=resnet18_small model.width=8")


def test_mismatch_names_the_data_and_suggests_init_from_for_the_same_network():
    model = {"_target_": "ferlab.models.resnet.resnet18_small", "width": 8, "in_chans": 1, "num_classes": 7}
    stored = {"model": model, "data": {"name": "synthetic", "num_classes": 7, "in_chans": 1, "image_size": 48}}
    current = {"model": {**model, "in_chans": 3, "num_classes": 8},
               "data": {"name": "ferplus", "num_classes": 8, "in_chans": 3, "image_size": 48}}
    line = describe_mismatch(stored, current, "a.ckpt")
    assert "this run builds model=resnet18_small on data=ferplus (8 classes, 3 channels, 48 px)" in line
    assert "use the overrides it was trained with: data=synthetic; " in line and line.endswith(
        "start a new run with init_from=a.ckpt instead")
    with pytest.raises(FerlabError):  # a file that holds no checkpoint at all is still one clear error
        load_checkpoint(Path(__file__))
