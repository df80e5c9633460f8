"""Fine-tuning controls: head/backbone parameter groups, BackboneFinetuning (freeze, unfreeze, resume), EMA and SWA
(what is validated, checkpointed and tested), batch mixing (soft targets in, hard labels for metrics), crops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from ferlab.lit.finetune import is_backbone
from ferlab.tasks.train import build, run_train

# two short epochs of two batches; injected callbacks record what the tests look at
TINY = ["data.source.num_images=200", "data.batch_size=16", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "logger=none", "test=false", "sched=none"]


class Record(Callback):
    """Keeps the weights after every training epoch and the first training batch it sees (class attributes)."""

    states: ClassVar[list[dict[str, torch.Tensor]]] = []
    batch: ClassVar[tuple | None] = None
    tested: ClassVar[dict[str, torch.Tensor]] = {}
    frozen: ClassVar[list[bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        Record.batch = Record.batch or tuple(t.clone() for t in batch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        Record.frozen.append(not any(p.requires_grad for n, p in pl_module.named_parameters()
                                     if is_backbone(n) and ".bn" not in n and "norm" not in n))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        Record.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        Record.tested = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.fixture
def record():
    Record.states, Record.batch, Record.frozen = [], None, []
    return ["+callbacks.record._target_=tests.test_finetune.Record"]


def _changed(a: dict, b: dict, backbone: bool) -> bool:
    """Whether any float weight of the backbone (or of the head) differs between two state dicts."""
    keys = [k for k in a if a[k].is_floating_point() and is_backbone(k) == backbone and "running_" not in k]
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_backbone_lr_mult_makes_named_groups_at_that_ratio(make_cfg):
    model = build(make_cfg("optim=sgd", "optim.backbone_lr_mult=0.1", "sched=none"))["model"]
    optimizer = model.configure_optimizers()
    head, backbone = optimizer.param_groups
    assert (head["name"], backbone["name"]) == ("head", "backbone")  # LearningRateMonitor: lr-SGD/head, lr-SGD/backbone
    assert backbone["lr"] == pytest.approx(0.1 * head["lr"]) and head["lr"] == 0.01
    assert {id(p) for p in head["params"]} == {id(p) for p in model.net.head.parameters()}
    assert len(backbone["params"]) + len(head["params"]) == len(list(model.parameters()))
    plain = build(make_cfg("optim=sgd", "sched=none"))["model"].configure_optimizers()
    assert len(plain.param_groups) == 1 and "name" not in plain.param_groups[0]  # default: lr-SGD as before


def test_backbone_is_frozen_then_trains_and_stays_trainable_after_resume(make_cfg, record, tmp_path):
    ft = ["callbacks=backbone_finetuning", "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch=1",
          "callbacks.backbone_finetuning.train_bn=false"]
    first = run_train(make_cfg(*TINY, *ft, *record, "trainer.max_epochs=2"))
    (epoch0, epoch1), initial = Record.states, build_initial(make_cfg(*TINY, *ft, "trainer.max_epochs=2"))
    assert Record.frozen == [True, False]
    assert not _changed(initial, epoch0, backbone=True) and _changed(initial, epoch0, backbone=False)
    assert _changed(epoch0, epoch1, backbone=True)  # unfrozen at epoch 1, at 0.1 x the head's rate
    Record.states, Record.frozen = [], []
    run_train(make_cfg(*TINY, *ft, *record, "trainer.max_epochs=3", f"ckpt_path={first['checkpoints']['last']}",
                       f"hydra.run.dir={tmp_path / 'resumed'}"))
    assert Record.frozen == [False] and _changed(epoch1, Record.states[0], backbone=True)  # setup froze it; undone


def build_initial(cfg) -> dict[str, torch.Tensor]:
    """The weights a run starts from (same seed, same build)."""
    import pytorch_lightning as pl

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return {k: v.clone() for k, v in build(cfg)["model"].state_dict().items()}


@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_weight_averaging_is_what_is_checkpointed_and_tested(make_cfg, record, averaging):
    extra = {"ema": ["callbacks.ema.decay=0.5"], "swa": ["callbacks.swa.swa_epoch_start=0"]}[averaging]
    cfg = make_cfg(*TINY, f"callbacks={averaging}", *extra, *record, "trainer.max_epochs=2", "test=true")
    run_train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, trained = ckpt["state_dict"], ckpt["current_model_state"]
    assert int(ckpt["averaging_state"]["n_averaged"]) == {"ema": 4, "swa": 2}[averaging]  # 4 steps, 2 epochs
    assert _changed(averaged, trained, backbone=True) and _changed(averaged, trained, backbone=False)
    assert all(torch.equal(trained[k], v) for k, v in Record.states[-1].items())  # what was trained: kept too
    best = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=True)
    assert all(torch.equal(v, Record.tested[k]) for k, v in best["state_dict"].items())  # the test ran on the average
    if averaging == "ema":  # every EMA checkpoint after an update differs from the trained weights
        assert _changed(best["state_dict"], best["current_model_state"], backbone=False)
    from ferlab.checkpoints.restore import restore

    net = restore(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt").net  # eval, predict, export read this
    assert all(torch.equal(v, best["state_dict"][f"net.{k}"]) for k, v in net.state_dict().items())


def test_mixed_batches_carry_soft_targets_and_metrics_keep_the_hard_labels(make_cfg, record):
    metrics = run_train(make_cfg(*TINY, *record, "trainer.max_epochs=1", "augment.mixup.p=1.0",
                                 "augment.mixup.alpha=1.0"))
    x, soft, hard = Record.batch
    assert soft.shape == (16, 7) and soft.dtype == torch.float32 and hard.dtype == torch.int64
    partner = hard.roll(1, 0)  # torchvision pairs each image with the previous one (the batch is shuffled)
    lam = soft[(hard != partner).nonzero()[0, 0], hard[hard != partner][0]]  # from a pair of different classes
    one_hot = torch.nn.functional.one_hot
    assert 0 < lam < 1 and torch.allclose(soft, lam * one_hot(hard, 7) + (1 - lam) * one_hot(partner, 7))
    assert 0 <= metrics["history"][0]["train/acc"] <= 1


def test_mixing_keeps_distribution_targets_and_cutmix_pastes_a_box():
    from ferlab.data.mixing import BatchMix

    torch.manual_seed(0)
    votes = torch.tensor([[6.0, 4.0, 0.0], [0.0, 0.0, 10.0]])  # FER+ vote counts
    x = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    mixed_x, mixed_y = BatchMix(3, cutmix={"alpha": 1.0, "p": 1.0})(x, votes)
    lam = 1 - mixed_x[0].mean()  # image 0 (zeros) got a box of image 1 (ones) covering 1 - lam of it
    assert torch.allclose(mixed_y[0], lam * torch.tensor([0.6, 0.4, 0.0]) + (1 - lam) * torch.tensor([0, 0, 1.0]))
    unmixed_x, unmixed_y = BatchMix(3, mixup={"alpha": 1.0, "p": 0.0})(x, torch.tensor([2, 0]))
    assert torch.equal(unmixed_x, x) and torch.equal(unmixed_y, torch.tensor([[0, 0, 1.0], [1.0, 0, 0]]))


def test_training_crops_a_window_and_evaluation_sees_the_whole_image(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("augment=none", "augment.crop=40")
    dm = instantiate(cfg.data, augment=instantiate(cfg.augment))
    dm.mean, dm.std = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    images = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    train, evaluation = dm.transform(images, train=True), dm.transform(images, train=False)
    assert train.shape == (4, 1, 40, 40) and evaluation.shape == (4, 1, 48, 48)
    for crop, image in zip(train, evaluation, strict=True):  # each crop is a window of its own image
        assert any(torch.equal(crop, image[:, i:i + 40, j:j + 40]) for i in range(9) for j in range(9))


def test_a_crop_trained_run_is_tested_on_ten_crops(make_cfg):
    cfg = make_cfg(*TINY, "trainer.max_epochs=1", "augment.crop=40", "tta=ten_crop", "tta.crop_size=40",
                   "tta.resize=false", "test=true", "trainer.limit_test_batches=1")
    metrics = run_train(cfg)
    report = json.loads((Path(cfg.paths.output_dir) / "eval" / "report.json").read_text())
    assert report["tta"] == {"mode": "ten_crop", "views": 10, "crop_size": 40, "resize": False}
    assert 0 <= metrics["test"]["test/acc"] <= 1 and metrics["test"]["test/loss"] > 0


def test_backbone_finetuning_resumed_mid_epoch_equals_the_uninterrupted_run(make_cfg, tmp_path):
    """SIGUSR1 in the middle of an epoch after the unfreezing one, then a resume: the backbone trains on at once,
    at the restored learning rates (cosine schedule, backbone group), so every epoch's metrics and the final weights
    equal the uninterrupted run's."""
    import signal

    from ferlab.errors import Preempted
    from tests.test_resume import _same_weights

    ft = ["callbacks=backbone_finetuning", "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch=1",
          "sched=cosine", "trainer.max_epochs=3", "test=false", "seed=3", "data.source.num_images=200",
          "data.batch_size=16", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "logger=none"]
    whole = run_train(make_cfg(*ft, f"paths.output_dir={tmp_path / 'whole'}"))
    stopped = tmp_path / "stopped"
    with pytest.raises(Preempted):
        run_train(make_cfg(*ft, f"paths.output_dir={stopped}", "+callbacks.sig._target_=tests.test_resume.SignalAtStep",
                           "+callbacks.sig.step=10", f"+callbacks.sig.signum={int(signal.SIGUSR1)}"))
    resumed = run_train(make_cfg(*ft, f"ckpt_path={stopped}", f"paths.output_dir={tmp_path / 'resumer'}"))
    assert resumed["history"] == whole["history"]
    last = Path("checkpoints") / "last.ckpt"
    assert _same_weights(stopped / last, tmp_path / "whole" / last)


def test_modules_a_weight_load_reinitialised_learn_with_the_head(make_cfg, tmp_path):
    """A stem that init_from could not load (another stem) is not frozen or slowed down as backbone."""
    donor = run_train(make_cfg(*TINY, "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'donor'}"))
    parts = build(make_cfg(*TINY, "model.stem=small", "optim=sgd", "optim.backbone_lr_mult=0.1",
                           f"init_from={donor['checkpoints']['last']}"))
    model = parts["model"]
    assert model.fresh_modules == ["stem"] and "stem" in parts["weights"]["init_from"]["skipped"]
    head, backbone = model.configure_optimizers().param_groups
    assert {id(p) for p in model.net.stem.parameters()} <= {id(p) for p in head["params"]}
    assert not {id(p) for p in model.net.stem.parameters()} & {id(p) for m in model.backbone for p in m.parameters()}
