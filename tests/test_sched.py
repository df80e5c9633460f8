"""Scheduler options: the learning rate they produce epoch by epoch, warmup, plateau, state round trip."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from ferlab.lit.sched import LinearWarmup


def _lrs(schedule, epochs: int, metrics=None, lr: float = 1.0) -> list[float]:
    """The lr of every epoch when Lightning steps `schedule` once per epoch."""
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr)
    config = schedule(opt)
    out = []
    for epoch in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if config is not None:
            value = None if metrics is None else metrics[epoch]
            config["scheduler"].step(value) if config["reduce_on_plateau"] else config["scheduler"].step()
    return out


def _sched(make_cfg, *overrides):
    return instantiate(make_cfg(*overrides, fast=False).sched)


def test_step_defaults_are_report003s_and_report001_sets_its_own(make_cfg):
    assert _lrs(_sched(make_cfg, "sched=step"), 21)[::10] == pytest.approx([1.0, 0.1, 0.01])
    lrs = _lrs(_sched(make_cfg, "sched=step", "sched.scheduler.step_size=9", "sched.scheduler.gamma=0.4"), 19)
    assert lrs[8] == 1.0 and lrs[9] == pytest.approx(0.4) and lrs[18] == pytest.approx(0.16)


def test_multistep_decays_at_report003s_milestones(make_cfg):
    lrs = _lrs(_sched(make_cfg, "sched=multistep"), 51)
    assert [lrs[i] for i in (9, 10, 19, 20, 49, 50)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01, 0.001])


def test_delayed_step_is_wujies_decay_after_epoch_80(make_cfg):
    lrs = _lrs(_sched(make_cfg, "sched=delayed_step"), 96, lr=0.01)  # x0.9 every 5 epochs from epoch 80
    assert lrs[0] == lrs[84] == 0.01 and [lrs[85], lrs[89], lrs[90], lrs[95]] == pytest.approx(
        [0.009, 0.009, 0.0081, 0.00729])


def test_piecewise_is_barsoums_schedule(make_cfg):
    lrs = _lrs(_sched(make_cfg, "sched=piecewise"), 60, lr=0.05)
    assert [lrs[19], lrs[20], lrs[39], lrs[40], lrs[59]] == pytest.approx([0.05, 0.025, 0.025, 0.005, 0.005])


def test_cosine_spans_max_epochs_and_shrinks_by_the_warmup(make_cfg):
    lrs = _lrs(_sched(make_cfg, "sched=cosine", "trainer.max_epochs=10"), 11)
    assert lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(0.0, abs=1e-12)
    warm = _lrs(_sched(make_cfg, "sched=cosine", "trainer.max_epochs=10", "sched.warmup_epochs=2"), 11)
    assert warm[:3] == pytest.approx([0.1, 0.55, 1.0])  # linear from 0.1 x lr
    assert warm[6] == pytest.approx(0.5) and warm[10] == pytest.approx(0.0, abs=1e-12)  # cosine over epochs 2..10


def test_plateau_reduces_after_patience_on_the_monitored_metric_even_after_warmup(make_cfg):
    schedule = _sched(make_cfg, "sched=plateau", "sched.scheduler.patience=2", "sched.warmup_epochs=2")
    config = schedule(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0))
    assert config["reduce_on_plateau"] and config["monitor"] == "val/acc"
    assert config["scheduler"].after.mode == "max"  # follows monitor_mode
    flat = [0.5] * 10  # val/acc never improves
    lrs = _lrs(schedule, 10, metrics=flat)
    # warmup epochs 0-1; from epoch 2 the plateau sees 0.5 (its best), then 3 epochs without gain (> patience 2)
    assert lrs[:3] == pytest.approx([0.1, 0.55, 1.0])
    assert lrs[5] == pytest.approx(1.0) and lrs[6] == pytest.approx(0.1)


def test_none_is_constant_unless_warmed_up(make_cfg):
    assert _sched(make_cfg, "sched=none")(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)) is None
    assert _lrs(_sched(make_cfg, "sched=none", "sched.warmup_epochs=4"), 6) == pytest.approx(
        [0.1, 0.325, 0.55, 0.775, 1.0, 1.0])


def test_warmup_state_round_trips_mid_schedule():
    def make():
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
        return opt, LinearWarmup(opt, torch.optim.lr_scheduler.StepLR(opt, 2, 0.5), warmup=3)

    opt, sched = make()
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert "optimizer" not in state and isinstance(state["after"], dict)
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # Lightning restores the optimizer alongside
    for _ in range(4):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert math.isclose(opt.param_groups[0]["lr"], opt2.param_groups[0]["lr"])


@pytest.mark.slow
def test_a_warmed_up_plateau_in_lightning_and_a_history_past_the_best_epoch(make_cfg):
    # lr ~ 0 and no batch norm: both epochs score the same, so the best (tested) checkpoint stays at epoch 0
    from ferlab.tasks.train import run_train

    metrics = run_train(make_cfg("sched=plateau", "sched.warmup_epochs=1", "trainer.max_epochs=2", "optim.lr=1e-9",
                                 "model.norm=none", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                                 "logger=csv"))
    history = metrics["history"]
    assert [r["lr-Adam"] for r in history] == pytest.approx([1e-10, 1e-9])  # warmup epoch at 0.1 x lr, then lr
    assert metrics["best"]["epoch"] == 0 and "test/acc" in metrics["test"]
    assert [r["epoch"] for r in history] == [0, 1]  # testing the epoch-0 checkpoint does not cut the history
