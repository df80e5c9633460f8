"""Callbacks that make a run survive kills and bad numbers: exact RNG state in checkpoints, a last.ckpt written
at every epoch end, and a guard that stops on a non-finite loss before it reaches the weights.

`callbacks()` is what `ferlab train` adds to every run (with `ferlab.lit.preemption.Preemption`).
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

from ferlab.errors import FerlabError

log = logging.getLogger(__name__)

LAST = "last.ckpt"


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

    Lightning restores weights, optimizer, scheduler and loop counters but not the RNGs. Shuffling (RandomSampler
    and WeightedRandomSampler draw their seed from torch's global RNG when the epoch's iterator starts), dataloader
    worker seeds, the batched augmentation and dropout all draw from them, so restoring them is what makes a run
    resumed at an epoch boundary bit-identical to one never stopped. The states are applied as soon as Lightning
    loads callback states, which is before the resumed epoch's iterator is created and nothing draws in between.
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

    def __init__(self) -> None:
        self.dirpath: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        owners = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.save_last]
        if owners and stage == "fit":
            self.dirpath = Path(owners[0].dirpath or Path(trainer.default_root_dir) / "checkpoints")
            for owner in owners:
                owner.save_last = False

    @property
    def path(self) -> Path | None:
        """Where last.ckpt goes (None when the run keeps no last checkpoint)."""
        return self.dirpath / LAST if self.dirpath is not None else None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.path is not None and not trainer.sanity_checking:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> Path | None:
        """Save the trainer's full state to last.ckpt (atomically, through the trainer's checkpoint IO)."""
        if self.path is None:
            return None
        trainer.save_checkpoint(self.path, weights_only=False)  # full state: optimizer, loops, callbacks
        return self.path


class NonFiniteLoss(FerlabError):
    """Training produced a NaN or infinite loss, or weights about to be checkpointed are not finite."""


def _last_good(trainer: pl.Trainer) -> str:
    last = next((c.path for c in trainer.callbacks if isinstance(c, LastCheckpoint) and c.path), None)
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
    """The reliability callbacks every `ferlab train` run gets next to the `configured` ones.

    LastCheckpoint only joins when a configured ModelCheckpoint asks for a last checkpoint (`callbacks=none`
    keeps no checkpoints at all, and a Checkpoint callback alone would pose as the trainer's checkpoint_callback).
    """
    from ferlab.lit.preemption import Preemption

    wants_last = any(isinstance(c, ModelCheckpoint) and c.save_last for c in configured)
    return [RngState(), NanGuard(), Preemption(), *([LastCheckpoint()] if wants_last else [])]
