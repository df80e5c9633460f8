"""Callbacks that make a run survive kills and bad numbers: exact RNG state in checkpoints, the epoch's partial
metric states for a resume in the middle of an epoch, a last.ckpt written at every epoch end, and a guard that stops
on a non-finite loss before it reaches the weights.

`callbacks()` is what `ferlab train` adds to every run (with `ferlab.checkpoints.preemption.Preemption`, which saves
through `LastCheckpoint` when a signal stops the run).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, Checkpoint, ModelCheckpoint
from torch import Tensor
from torchmetrics import Metric

from ferlab.checkpoints.fit_audit import FitAudit
from ferlab.errors import FerlabError
from ferlab.runs.io import remove_temporaries
from ferlab.runs.runfiles import LAST_NAME

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """torch (CPU and initialized CUDA devices), numpy and Python RNG states as weights_only-loadable containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`; CUDA states are restored only when the same number of devices is present."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class RngState(Callback):
    """Saves the global RNG states in every checkpoint and puts them back when a run resumes from it.

    Lightning restores weights, optimizer, scheduler and loop counters but not the RNGs. Shuffling (each epoch's
    seed is drawn from torch's global RNG when its first batch is fetched: `ferlab.data.resumable`), the batched
    augmentation and dropout all draw from them, so restoring them is what makes a resumed run bit-identical to one
    never stopped. The states are applied as soon as Lightning loads callback states; nothing draws from them
    before the first resumed batch (a mid-epoch resume replays the epoch's order from its saved seed instead of
    drawing one, and loaders seed their workers from their own generators).
    """

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            set_rng_state(state_dict)


class LastCheckpoint(Checkpoint):
    """Writes `<checkpoint dir>/last.ckpt` at the end of every training epoch.

    Lightning 2.6's ModelCheckpoint(save_last=True) rewrites last.ckpt only in epochs where it also saved a top-k
    checkpoint, i.e. when the monitored metric improved; a run killed after a few epochs without improvement would
    resume from a stale epoch. This callback takes `save_last` over from every ModelCheckpoint that asks for it, and
    as a Checkpoint it runs after them, so the saved ModelCheckpoint state already knows this epoch's best.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath else None  # known before setup: a DDP main process never runs it

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        owners = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.save_last]
        if owners and stage == "fit":
            self.dirpath = self.dirpath or Path(owners[0].dirpath or Path(trainer.default_root_dir) / "checkpoints")
            for owner in owners:
                owner.save_last = False
            if trainer.is_global_zero and self.dirpath.is_dir():  # left by an earlier attempt killed mid-save
                remove_temporaries(self.dirpath, ".ckpt")

    @property
    def path(self) -> Path | None:
        """Where last.ckpt goes (None when the run keeps no last checkpoint)."""
        return self.dirpath / LAST_NAME if self.dirpath is not None else None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.path is not None and not trainer.sanity_checking:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> Path | None:
        """Save the trainer's full state to last.ckpt (atomically, through the trainer's checkpoint IO)."""
        if self.path is None:
            return None
        trainer.save_checkpoint(self.path, weights_only=False)  # full state: optimizer, loops, callbacks
        return self.path


def last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """Where this trainer keeps last.ckpt (None when it keeps none); the one place that path is derived."""
    return next((c.path for c in trainer.callbacks if isinstance(c, LastCheckpoint) and c.path is not None), None)


def _metric_states(module: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Every torchmetrics Metric's accumulated state (tensors or lists of tensors, on the CPU) and update count."""
    out = {}
    for name, metric in module.named_modules():
        if isinstance(metric, Metric):
            state = {k: [t.detach().cpu() for t in v] if isinstance(v, list) else v.detach().cpu()
                     for k, v in metric.metric_state.items()}
            out[name] = {"state": state, "updates": metric.update_count}
    return out


def _load_metric_states(module: torch.nn.Module, states: dict[str, dict[str, Any]]) -> None:
    metrics = dict(module.named_modules())
    for name, saved in states.items():
        metric = metrics.get(name)
        if not isinstance(metric, Metric):
            continue
        for key, value in saved["state"].items():
            setattr(metric, key, [t.to(metric.device) for t in value] if isinstance(value, list)
                    else value.to(metric.device))
        metric._update_count = saved["updates"]  # torchmetrics keeps no setter; forward's state reduction reads it
        metric._computed = None


class EpochState(Callback):
    """Puts back what Lightning's checkpoint leaves out when a run resumes in the middle of an epoch.

    Lightning restores the loops (which batch comes next) and the dataloader (`ferlab.data.resumable`); not the
    epoch's partial torchmetrics states (train/loss and train/acc so far: the resumed epoch would average only the
    batches after the resume) nor `trainer.callback_metrics` (the epoch's `lr-*`, logged by LearningRateMonitor
    when the epoch started: the epoch's history row would lack it). Both are saved in every checkpoint, one entry
    per rank (each rank holds its own share of the batches), and put back before the first resumed batch, only
    when Lightning resumes mid-epoch.
    """

    KEY = "ferlab_epoch_state"

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        scalars = {k: v.detach().cpu() for k, v in trainer.callback_metrics.items() if torch.is_tensor(v)}
        mine = {"metrics": _metric_states(pl_module), "callback_metrics": scalars}
        ranks = [mine]
        if trainer.world_size > 1 and torch.distributed.is_initialized():  # every rank saves: a collective is safe
            ranks = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, mine)
        checkpoint[self.KEY] = ranks

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.pending = checkpoint.get(self.KEY)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ranks, self.pending = self.pending, None
        if not ranks or not trainer.fit_loop.restarted_mid_epoch:
            return
        state = self._mine(trainer, ranks)
        _load_metric_states(pl_module, state["metrics"])
        trainer.callback_metrics.update({k: v.to(pl_module.device) for k, v in state["callback_metrics"].items()})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resumed from the last epoch's checkpoint (a stop during the test stage): the fit had nothing left to
        # train and never started; the last epoch's metrics (metrics.json's "final") come from the checkpoint
        ranks, self.pending = self.pending, None
        if ranks and not trainer.callback_metrics:
            metrics = self._mine(trainer, ranks)["callback_metrics"]
            trainer.callback_metrics.update({k: v.to(pl_module.device) for k, v in metrics.items()})

    @staticmethod
    def _mine(trainer: pl.Trainer, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        return ranks[trainer.global_rank] if len(ranks) == trainer.world_size else ranks[0]


class NonFiniteLoss(FerlabError):
    """Training produced a NaN or infinite loss, or weights about to be checkpointed are not finite."""


def _last_good(trainer: pl.Trainer) -> str:
    last = last_checkpoint(trainer)
    return str(last) if last is not None and last.is_file() else "none saved yet"


class NanGuard(Callback):
    """Stops training at the first non-finite loss, before its backward pass and optimizer step.

    It also refuses to write a checkpoint whose weights are not finite (an optimizer step with a finite loss
    can still produce them, e.g. with `optim.lr=1e30`), so last.ckpt and best.ckpt always hold the last good
    state. The error names the epoch and step; `ferlab train` records it in failed.json.
    """

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        stop = not finite
        if trainer.world_size > 1:  # all ranks stop at the same step, or the others would wait in the next all-reduce
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            value = "non-finite on another rank" if finite else loss.detach().float().cpu().flatten()[0].item()
            raise NonFiniteLoss(
                f"training loss is {value} at epoch {trainer.current_epoch}, global step {trainer.global_step} "
                f"(batch {trainer.fit_loop.epoch_loop.batch_idx} of the epoch); stopped before the optimizer step; "
                f"last good checkpoint: {_last_good(trainer)}; try a lower optim.lr or trainer.gradient_clip_val"
            )

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint.get("state_dict", {}).items()
               if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteLoss(
                f"weights became non-finite ({bad[0]} and {len(bad) - 1} more) by epoch {trainer.current_epoch}, "
                f"global step {trainer.global_step}; not saving them; last good checkpoint: {_last_good(trainer)}; "
                "try a lower optim.lr or trainer.gradient_clip_val"
            )


def callbacks(configured: list[Callback]) -> list[Callback]:
    """The reliability callbacks every `ferlab train` run gets next to the `configured` ones (and `Preemption`);
    `FitAudit` fails a fit that ends short of its limits (`ferlab.checkpoints.fit_audit`).

    LastCheckpoint only joins when a configured ModelCheckpoint asks for a last checkpoint (`callbacks=none`
    keeps no checkpoints at all, and a Checkpoint callback alone would pose as the trainer's checkpoint_callback).
    """
    owner = next((c for c in configured if isinstance(c, ModelCheckpoint) and c.save_last), None)
    return [RngState(), EpochState(), NanGuard(), FitAudit(),
            *([LastCheckpoint(owner.dirpath)] if owner is not None else [])]
