"""What `ferlab train` costs next to a hand-written PyTorch loop, and what the CPU speed options buy.

(a) Framework overhead: ResNet-18 (`model=resnet18`) on 48x48 synthetic faces, batch 128, CPU, one epoch of the
synthetic set (8,000 training images: 62 steps). The hand-written loop trains the same network (same seed, same
initial weights) with the same optimizer on the same batches: the datamodule's own loader and its on-device
augmentation and normalization (`transform`). `ferlab train` runs as users run it (progress bar, checkpoints,
TensorBoard, metric history, NaN guard, RNG state...); validation is off in both (`limit_val_batches=0`),
so only training steps are compared. Steps/s is measured from the start of step 3 to the end of the last step,
the same way on both sides. Target: ferlab / hand-written >= 0.95.

(b) Speed options in `ferlab train`: `trainer.precision=bf16-mixed` and channels-last weights
(`+callbacks.channels_last._target_=ferlab.lit.speed.ChannelsLast`), against fp32.

    .venv/bin/python -m benchmarks.overhead [--quick]
"""

from __future__ import annotations

import importlib
import tempfile
import time
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback

from benchmarks.common import cli, compose_train, data_root, machine, table

WARMUP = 2
TARGET = 0.95


class StepTimer(Callback):
    """Times training steps `WARMUP`.. of the first epoch; the last instance is kept in `StepTimer.last`."""

    last: StepTimer | None = None

    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0
        self.steps = 0
        StepTimer.last = self

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == WARMUP and trainer.current_epoch == 0:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx >= WARMUP:
            self.t1, self.steps = time.perf_counter(), batch_idx + 1 - WARMUP

    @property
    def steps_per_s(self) -> float:
        return self.steps / (self.t1 - self.t0)


def _overrides(quick: bool) -> list[str]:
    size = ["data.source.num_images=1000", "trainer.limit_train_batches=5"] if quick else []
    return ["model=resnet18", "data.batch_size=128", "trainer=cpu", "trainer.max_epochs=1", "test=false",
            "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "monitor=train/loss",
            "monitor_mode=min", "optimized_metric=null", *size]


def hand_written(cfg: Any) -> float:
    """Steps/s of a plain loop: the config's net, optimizer and loss on the datamodule's batches."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from ferlab.lit.finetune import optimizer_factory

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, augment=instantiate(cfg.augment))
    datamodule.prepare_data()
    datamodule.setup("fit")
    net, loss_fn = instantiate(cfg.model).train(), instantiate(cfg.loss)
    optimizer = optimizer_factory(cfg.optim)[0](params=net.parameters())  # without ferlab's own backbone_lr_mult
    limit = cfg.trainer.limit_train_batches or float("inf")
    t0 = steps = 0
    for i, (x, y) in enumerate(datamodule.train_dataloader()):
        if i >= limit:
            break
        x = datamodule.transform(x, train=True)  # (B, 1, 48, 48) augmented, normalized
        if i == WARMUP:
            t0 = time.perf_counter()
        loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps = i + 1 - WARMUP
    return steps / (time.perf_counter() - t0)


def framework(cfg: Any) -> float:
    """Steps/s of `ferlab train` (run_train) with the given config."""
    from ferlab.tasks.train import run_train

    run_train(cfg)
    # the instance Hydra built lives in the importable module, not in __main__ under `python -m`
    return importlib.import_module("benchmarks.overhead").StepTimer.last.steps_per_s


def _measure(kind: str, extra: list[str], quick: bool, tmp: Path) -> float:
    run = tmp / f"run{time.perf_counter_ns()}"
    timer = ["+callbacks.step_timer._target_=benchmarks.overhead.StepTimer"]
    cfg = compose_train(data_root(), [*_overrides(quick), *timer, *extra, f"paths.log_dir={tmp}"], run)
    return hand_written(cfg) if kind == "loop" else framework(cfg)


OVERHEAD = [  # (label, kind, extra overrides)
    ("hand-written PyTorch loop", "loop", []),
    ("`ferlab train` (defaults: rich progress bar, TensorBoard, checkpoints)", "ferlab", []),
    ("`ferlab train +trainer.enable_progress_bar=false callbacks.rich_progress_bar=null`", "ferlab",
     ["callbacks.rich_progress_bar=null", "+trainer.enable_progress_bar=false"]),
    ("`ferlab train logger=none callbacks=none` (no logging, no checkpoints)", "ferlab",
     ["logger=none", "callbacks=none", "+trainer.enable_progress_bar=false"]),
]
SPEED = [
    ("fp32 (`trainer.precision=32-true`)", []),
    ("`trainer.precision=bf16-mixed`", ["trainer.precision=bf16-mixed"]),
    ("channels-last weights", ["+callbacks.channels_last._target_=ferlab.lit.speed.ChannelsLast"]),
    ("bf16-mixed + channels-last", ["trainer.precision=bf16-mixed",
                                    "+callbacks.channels_last._target_=ferlab.lit.speed.ChannelsLast"]),
]


def _best_interleaved(repeats: int, cases: dict[str, tuple[str, list[str]]], quick: bool, tmp: Path) -> dict:
    """Best steps/s of each case over `repeats` rounds; a round runs every case once, so load changes hit all."""
    best = dict.fromkeys(cases, 0.0)
    for _ in range(repeats):
        for label, (kind, extra) in cases.items():
            best[label] = max(best[label], _measure(kind, extra, quick, tmp))
    return best


def main(quick: bool = False) -> str:
    """Both tables as markdown."""
    import warnings

    warnings.filterwarnings("ignore")
    repeats = 1 if quick else 2
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-") as tmp:
        overhead = _best_interleaved(repeats, {label: (kind, extra) for label, kind, extra in OVERHEAD}, quick,
                                     Path(tmp))
        no_bar = ["callbacks.rich_progress_bar=null", "+trainer.enable_progress_bar=false"]
        speed = _best_interleaved(repeats, {label: ("ferlab", [*no_bar, *extra]) for label, extra in SPEED}, quick,
                                  Path(tmp))
    reference, fp32 = overhead[OVERHEAD[0][0]], speed[SPEED[0][0]]
    rows = [(label, f"{v:.2f}", f"{v / reference:.3f}", "" if i == 0 else ("yes" if v / reference >= TARGET else "no"))
            for i, (label, v) in enumerate(overhead.items())]
    size = "800 training images, 5 steps" if quick else "8,000 training images (one epoch, 62 steps)"
    out = [f"### Framework overhead: ResNet-18, 48x48, batch 128, CPU ({size})", "",
           f"Machine: {machine()}. Best of {repeats} interleaved rounds; steps/s from step {WARMUP + 1} to the last.", "",
           table(["training loop", "steps/s", "ratio to hand-written", f">= {TARGET}"], rows, right=(1, 2)), "",
           "### Speed options in `ferlab train` (same model and batches, no progress bar)", "",
           table(["option", "steps/s", "speed-up vs fp32"],
                 [(label, f"{v:.2f}", f"{v / fp32:.2f}x") for label, v in speed.items()], right=(1, 2))]
    return "\n".join(out)


if __name__ == "__main__":
    cli("overhead", main, __doc__.splitlines()[0])
