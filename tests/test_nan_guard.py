"""NaN guard: a non-finite loss stops the run naming its step, no checkpoint ever holds non-finite weights,
failed.json records it, and in a sweep it is one failed job while the others finish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ferlab.checkpoints.ckpt_file import load_checkpoint
from ferlab.checkpoints.resilience import NonFiniteLoss
from ferlab.config.runner import guarded
from ferlab.tasks.train import run_train
from tests.test_resume import SMALL, ferlab_proc  # noqa: F401  (fixture)


class BadAtStep(nn.CrossEntropyLoss):
    """Cross entropy (loss=ce's arguments) that goes wrong at its `step`-th training call (0-based).

    mode "loss": the loss itself is NaN. mode "grad": the loss stays finite but its gradient is NaN
    (0 * d sqrt(x)/dx at x = 0 is 0/0), so the optimizer step writes NaN into the weights.
    """

    def __init__(self, step: int, mode: str = "loss", **ce_args) -> None:
        super().__init__(**ce_args)
        self.step, self.mode, self.calls = step, mode, 0

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        loss = super().forward(logits, y)
        if not self.training:
            return loss
        self.calls += 1
        if self.calls - 1 != self.step:
            return loss
        if self.mode == "loss":
            return loss * float("nan")
        return loss + 0 * (logits - logits.detach()).sqrt().sum()


def _finite(path: Path) -> bool:
    return all(torch.isfinite(v).all() for v in load_checkpoint(path)["state_dict"].values() if v.is_floating_point())


def test_nan_loss_stops_at_its_step_keeps_last_good_checkpoint_and_writes_failed_json(make_cfg, capsys):
    # 5 steps per epoch: call 7 is epoch 1, global step 7 (batch 2 of the epoch)
    cfg = make_cfg(*SMALL, "trainer.max_epochs=3", "loss._target_=tests.test_nan_guard.BadAtStep", "+loss.step=7",
                   fast=False)
    run = Path(cfg.paths.output_dir)
    with pytest.raises(SystemExit) as exit_info:
        guarded(run_train, cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ferlab: error: training loss is nan at epoch 1, global step 7")
    assert str(run / "checkpoints" / "last.ckpt") in err[0]
    failed = json.loads((run / "failed.json").read_text())
    assert failed["type"] == "NonFiniteLoss" and "global step 7" in failed["message"]
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] == 5 and _finite(run / "checkpoints" / "last.ckpt")
    assert not (run / "metrics.json").exists()


def test_nan_gradient_never_reaches_a_checkpoint(make_cfg):
    # the last step of epoch 1 (call 9) leaves NaN weights with a finite loss; the epoch-end saves must refuse
    cfg = make_cfg(*SMALL, "trainer.max_epochs=3", "loss._target_=tests.test_nan_guard.BadAtStep", "+loss.step=9",
                   "+loss.mode=grad", fast=False)
    with pytest.raises(NonFiniteLoss, match=r"weights became non-finite .* by epoch 1, global step 10"):
        run_train(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    assert load_checkpoint(ckpts / "last.ckpt")["epoch"] == 0
    assert all(_finite(p) for p in ckpts.glob("*.ckpt"))


def test_huge_learning_rate_fails_the_job_but_not_the_sweep(ferlab_proc, tmp_path):  # noqa: F811
    sweep, log = tmp_path / "sweep", tmp_path / "log.txt"
    proc = ferlab_proc("train", "-m", *SMALL, "test=false", "optim.lr=1e30,0.001", f"hydra.sweep.dir={sweep}",
                       root=tmp_path, log=log)
    proc.join(300)
    assert proc.exitcode != 0  # the sweep reports that a job failed...
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert failed["type"] == "NonFiniteLoss" and "training loss is" in failed["message"]
    assert not list((sweep / "0").rglob("*.ckpt"))  # it diverged before any epoch ended: nothing to keep
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())  # ...and the other job still ran
    assert metrics["epochs"] == 1 and not (sweep / "1" / "failed.json").exists()
