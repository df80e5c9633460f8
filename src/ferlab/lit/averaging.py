"""Weight averaging on Lightning's WeightAveraging callbacks: an exponential moving average of the weights (EMA)
and stochastic weight averaging (SWA). Once the average exists, validation, checkpoints (their `state_dict`, which
eval, predict, export and `init_from` read) and the weights left after training are the averaged ones.

What ferlab changes in Lightning's behaviour, and why:
- before the first update there is no average: validation and checkpoints use the weights being trained
  (Lightning would swap in the copy taken at setup, i.e. the untrained network);
- testing or validating a checkpoint (`trainer.test(ckpt_path=best)` after fit) keeps the averaged weights it holds
  (Lightning would load the checkpoint's non-averaged `current_model_state` over them);
- the average lives on the network's device (Lightning places it where the network was at setup: the CPU).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging, WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

from ferlab.errors import FerlabError


class _AveragingFixes:
    """The behaviour described in the module docstring, mixed into a WeightAveraging subclass."""

    _average_model: Any
    _device: Any
    _swapped = False

    def _has_average(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None and self._device is None:
            self._average_model.to(pl_module.device)  # the strategy has moved the network by now

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swapped = self._has_average()
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._has_average():
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._has_average():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)  # state_dict: the average

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # its state_dict already holds the averaged weights: test those
        if "current_model_state" in checkpoint:  # resuming: the average and the trained weights both come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # else saved before the first update: the average starts when training continues


class EMA(_AveragingFixes, EMAWeightAveraging):
    """Exponential moving average of the weights (and batch-norm statistics), updated after optimizer steps.

    Args (Lightning's EMAWeightAveraging):
        decay: weight of the old average at each update (0.999: an average over about the last 1,000 updates).
        update_every_n_steps: update after every n-th optimizer step.
        update_starting_at_step, update_starting_at_epoch: no updates before this step / epoch (null: from the start).
        device: where the average lives (null: with the network).
        use_buffers: also average buffers (batch-norm running statistics); false copies them.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        device: str | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 <= decay <= 1.0 or update_every_n_steps < 1:
            raise FerlabError(f"callbacks.ema: decay in [0, 1] and update_every_n_steps >= 1 expected, got {decay}, "
                             f"{update_every_n_steps}")
        super().__init__(device=device, use_buffers=use_buffers, decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step,
                         update_starting_at_epoch=update_starting_at_epoch)


class SWA(_AveragingFixes, WeightAveraging):
    """Stochastic weight averaging (Izmailov et al., 2018): the equal-weight average of the weights at the end of
    every epoch from `swa_epoch_start` on (an int: that epoch, counted from 0; a float in (0, 1): that fraction of
    `trainer.max_epochs`). The weights join the average after the epoch's last batch, so that epoch's validation
    and checkpoints already see it. Batch-norm statistics are averaged with the weights (`use_buffers`). The learning
    rate is the schedule's: SWA wants it to stay moderately high while averaging (e.g. `sched=none` or `sched=step`).
    """

    def __init__(self, swa_epoch_start: int | float = 0.75, device: str | None = None, use_buffers: bool = True) -> None:
        fraction = isinstance(swa_epoch_start, float)
        if (fraction and not 0.0 < swa_epoch_start < 1.0) or (not fraction and swa_epoch_start < 0):
            raise FerlabError(f"callbacks.swa.swa_epoch_start must be an epoch >= 0 or a fraction in (0, 1), got {swa_epoch_start}")
        super().__init__(device=device, use_buffers=use_buffers)
        self.swa_epoch_start = swa_epoch_start
        self._start_epoch = 0 if fraction else int(swa_epoch_start)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if isinstance(self.swa_epoch_start, float):
            self._start_epoch = int(self.swa_epoch_start * max(int(trainer.max_epochs or 1), 1))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return False  # updates happen in on_train_batch_end, after each epoch's last batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        epoch = trainer.current_epoch
        if batch_idx + 1 >= trainer.num_training_batches and epoch >= self._start_epoch \
                and epoch > self._latest_update_epoch:
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "latest_update_epoch": self._latest_update_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._latest_update_epoch = state_dict.get("latest_update_epoch", -1)
