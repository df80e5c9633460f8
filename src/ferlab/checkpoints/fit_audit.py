"""Is a fit's state one a resume continues exactly from, and did a finished fit do the work it was asked for?

`unsafe_state` reads the loop counters Lightning keeps in a checkpoint (`checkpoint["loops"]["fit_loop"]`). ferlab
saves only at two kinds of points, both of which Lightning's restart continues exactly: the end of an epoch, and
the end of a training batch that stepped the optimizer, is not the epoch's last and is not followed by a
validation (`ferlab.checkpoints.preemption`). An earlier ferlab also saved in the middle of a validation, or between the
micro-batches of one optimizer step; Lightning resumes those as if the validation (or the accumulated gradients)
were done, silently losing work. Such a checkpoint is refused with one line.

`FitAudit` counts the fit's validations (kept in checkpoints) and, at the end of the fit, fails a run whose optimizer
steps, epochs or validation runs are fewer than `max_epochs` / `max_steps` (with `limit_train_batches`,
`accumulate_grad_batches`, `check_val_every_n_epoch`, `val_check_interval`) imply, unless a requested stop explains
it (`trainer.should_stop`: early stopping, the Optuna pruner, `max_time`, a callback of the user's own).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from ferlab.errors import FerlabError

KEY = "ferlab_fit_audit"


class IncompleteFit(FerlabError):
    """A fit ended having done less than its limits ask for, with no stop to explain it."""


def unsafe_state(fit_loop: dict[str, Any], accumulate: int = 1) -> str | None:
    """Why a saved fit-loop state cannot be continued exactly ('in the middle of a validation ...'), or None.

    `accumulate`: the run's accumulate_grad_batches."""
    val = fit_loop.get("epoch_loop.val_loop.batch_progress") or {}
    cur = val.get("current") or {}
    if cur and (cur["ready"] != cur["completed"] or (cur["completed"] > 0 and not val.get("is_last_batch"))):
        return f"in the middle of a validation (after {cur['completed']} of its batches)"
    epochs = (fit_loop.get("epoch_progress") or {}).get("current") or {}
    batches = (fit_loop.get("epoch_loop.batch_progress") or {}).get("current") or {}
    optim = fit_loop.get("epoch_loop.automatic_optimization.optim_progress") or {}
    steps = (((optim.get("optimizer") or {}).get("step") or {}).get("current") or {}).get("completed")
    if not epochs or not batches or steps is None or epochs["processed"] >= epochs["started"]:
        return None  # between epochs
    pending = batches["completed"] - steps * accumulate  # batches whose gradients were accumulated, not stepped
    if pending > 0:
        return (f"between the micro-batches of an optimizer step (the gradients of {pending} of "
                f"accumulate_grad_batches={accumulate} batches are not in it)")
    return None


def _planned(trainer: pl.Trainer) -> dict[str, int] | None:
    """The optimizer steps and epochs this fit's limits imply (None when they cannot be known in advance)."""
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0 or trainer.reload_dataloaders_every_n_epochs:
        return None
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)  # Lightning steps on an epoch's last batch
    max_epochs, max_steps = trainer.fit_loop.max_epochs, trainer.max_steps
    by_epochs = max_epochs * per_epoch if max_epochs is not None and max_epochs >= 0 else math.inf
    by_steps = max_steps if max_steps >= 0 else math.inf
    steps = min(by_epochs, by_steps)
    if not math.isfinite(steps):
        return None
    return {"steps": int(steps), "epochs": math.ceil(steps / per_epoch), "per_epoch": per_epoch,
            "cut": int(by_steps < by_epochs)}


def _planned_validations(trainer: pl.Trainer, plan: dict[str, int]) -> int | None:
    """How many validations the fit runs (None where that depends on time or a max_steps cut)."""
    if not trainer.enable_validation or (trainer.num_val_batches and sum(trainer.num_val_batches) == 0):
        return 0
    every = trainer.val_check_batch
    if plan["cut"] or getattr(trainer, "_val_check_time_interval", None) is not None or not isinstance(every, int):
        return None
    batches, each_n = int(trainer.num_training_batches), trainer.check_val_every_n_epoch
    if each_n is None:  # every `every` batches across epochs
        return plan["epochs"] * batches // every
    return sum((e + 1) % each_n == 0 for e in range(plan["epochs"])) * (batches // every)


def shortfall(trainer: pl.Trainer, validations: int | None) -> str | None:
    """What a finished fit did less of than its limits ask for, with no stop to explain it; None when complete.

    `validations`: the fit's validations, None when unknown (resumed from an earlier ferlab's checkpoint)."""
    if trainer.should_stop or trainer.fast_dev_run:  # early stopping, pruner, max_time, a user's callback
        return None
    plan = _planned(trainer)
    if plan is None:
        return None
    expected = _planned_validations(trainer, plan) if validations is not None else None
    done = (trainer.global_step, trainer.current_epoch, validations)
    # more than planned is no lost work (resumed from beyond lowered limits): only a shortfall fails
    if done[0] >= plan["steps"] and done[1] >= plan["epochs"] and (expected is None or validations >= expected):
        return None
    limits = f"max_steps={trainer.max_steps}" if plan["cut"] else f"max_epochs={trainer.fit_loop.max_epochs}"
    resumed = f"; it resumed from {trainer.ckpt_path}" if trainer.ckpt_path else ""
    return (f"training ended at epoch {done[1]}, step {done[0]}{_runs(validations, expected)}, but {limits} at "
            f"{plan['per_epoch']} optimizer steps per epoch means epoch {plan['epochs']}, step {plan['steps']}"
            f"{_runs(expected, expected)}; no early stopping, pruning, max_time or stop request explains it{resumed}; "
            "metrics.json not written")


def _runs(count: int | None, expected: int | None) -> str:
    """' (2 validation runs)', or '' when validations are not checked."""
    return "" if expected is None else f" ({count} validation run{'' if count == 1 else 's'})"


class FitAudit(Callback):
    """Counts the fit's validations and keeps a requested stop (`trainer.should_stop`) in checkpoints; at the end
    of the fit raises `IncompleteFit` when the fit did less than asked (see `shortfall`).

    A stop requested before a checkpoint was saved (early stopping at that epoch) is requested again when a run
    resumes from it, so the resumed run ends where the original one did instead of training on.
    """

    def __init__(self) -> None:
        self.validations: int | None = 0
        self._should_stop = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.validations is not None:
            self.validations += 1

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = {"validations": self.validations, "should_stop": bool(trainer.should_stop)}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != "fit":  # testing the best checkpoint after fit
            return
        saved = checkpoint.get(KEY)
        self.validations = saved["validations"] if saved else None  # an earlier ferlab's: not counted
        self._should_stop = bool(saved and saved["should_stop"])

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = trainer.should_stop or self._should_stop  # Lightning resets it when fit starts

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        problem = shortfall(trainer, self.validations)
        if problem:
            raise IncompleteFit(problem)
