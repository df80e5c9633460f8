"""Config validation before any work: one clear line naming the key, for every kind of mistake."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch
from lightning_fabric.connector import _PRECISION_INPUT

from ferlab.config.validate import PRECISIONS, problems, validate
from ferlab.errors import FerlabError
from ferlab.tasks.train import run_train
from tests.conftest import run_cli

BAD = [
    (["optim.lr=-0.01"], "optim.lr=-0.01 (expected a learning rate > 0)"),
    (["optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5"),
    (["data.batch_size=0"], "data.batch_size=0 (expected an integer >= 1)"),
    (["data.batch_size=1.5"], "data.batch_size=1.5"),
    (["trainer.precision=fp8"], "trainer.precision='fp8' (expected one of 64, 32, 16, bf16"),
    (["monitor=val/accuracy"], "monitor='val/accuracy' (expected a metric logged during training"),
    (["monitor_mode=maximum"], "monitor_mode='maximum'"),
    (["callbacks.model_checkpoint.monitor=val/acc_top5"], "callbacks.model_checkpoint.monitor='val/acc_top5'"),
    (["trainer.limit_val_batches=0"], "monitor='val/acc' is never logged: trainer.limit_val_batches=0"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5"),
    (["trainer.min_epochs=5", "trainer.max_epochs=2"], "trainer.min_epochs=5 is larger than trainer.max_epochs=2"),
    (["data=fer2013", "data.source.csv_path=/no/such/fer2013.csv"],
     "data.source.csv_path: /no/such/fer2013.csv does not exist"),
    (["augment.crop=52"], "augment.crop=52 is larger than the model's input side data.image_size=48"),
    (["augment.mixup.p=0.7", "augment.cutmix.p=0.5"], "augment.mixup.p=0.7 + augment.cutmix.p=0.5 is more than 1"),
    (["augment.cutmix.alpha=0"], "augment.cutmix.alpha=0 (expected a number > 0)"),
    (["optim.backbone_lr_mult=-1"], "optim.backbone_lr_mult=-1"),
    (["callbacks=[ema,swa]"], "callbacks ema, swa all average the weights; keep one"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[0][-1] for b in BAD])
def test_bad_value_is_one_line_naming_the_key_before_any_work(make_cfg, tmp_path, overrides, message):
    cfg = make_cfg(*overrides, fast="data=fer2013" not in overrides)  # FAST shrinks the synthetic source
    with pytest.raises(FerlabError) as info:
        run_train(cfg)
    text = str(info.value)
    assert text.startswith("invalid config: ") and message in text and "\n" not in text
    assert not (tmp_path / "data").exists() and not (tmp_path / ".cache").exists()  # nothing rendered or decoded
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_every_problem_is_reported_at_once(make_cfg):
    found = problems(make_cfg("optim.lr=0", "data.batch_size=-4", "trainer.precision=half"))
    assert [p.split("=")[0] for p in found] == ["optim.lr", "data.batch_size", "trainer.precision"]


@pytest.mark.parametrize("overrides", [
    [],
    ["trainer.precision=bf16-mixed", "monitor=val/loss", "monitor_mode=min"],
    ["trainer.limit_val_batches=0", "monitor=train/loss", "monitor_mode=min"],
    ["trainer.limit_train_batches=3", "data.eval_batch_size=null", "optim=sgd"],
    ["trainer=ddp_sim"],
])
def test_valid_configs_pass(make_cfg, overrides):
    cfg = make_cfg(*overrides)
    assert problems(cfg) == []  # the synthetic source renders its CSV, so its missing path is fine
    validate(cfg)  # raises FerlabError on any problem


@pytest.mark.parametrize("preset", ["gpu", "ddp", "ddp_multinode"])
def test_gpu_presets_need_a_gpu(make_cfg, preset):
    cfg = make_cfg(f"trainer={preset}")
    if torch.cuda.is_available():
        validate(cfg)
    else:
        with pytest.raises(FerlabError, match="trainer.accelerator=gpu but no CUDA GPU is visible"):
            validate(cfg)


def test_precision_list_matches_lightning():
    def flatten(t):
        return [x for a in typing.get_args(t) for x in (flatten(a) if typing.get_args(a) else [a])]

    assert sorted(PRECISIONS) == sorted({str(p) for p in flatten(_PRECISION_INPUT)})


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    result = run_cli("train", "data.batch_size=0", "optim.lr=-1", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "ferlab: error: invalid config: optim.lr=-1 (expected a learning rate > 0); "
        "data.batch_size=0 (expected an integer >= 1)"
    ]
    failed = next((tmp_path / "outputs" / "train" / "runs").glob("*/failed.json"))
    assert "data.batch_size=0" in failed.read_text()
