"""Pruning for Optuna trials: the trial's `optimized_metric` reported after each validation epoch, and training
stopped (as early stopping would) when the study's pruner rejects the trial.

A small callback of ferlab's own: optuna-integration's PyTorchLightningPruningCallback subclasses the unified
`lightning` package's Callback, which `pytorch_lightning` (what ferlab trains with) does not accept.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from ferlab.errors import FerlabError
from ferlab.search.trial import TRIAL_ENV

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    """Reports `monitor` to trial `number` of a study after every validation epoch; stops training when the
    study's pruner rejects the trial. The study is opened on first use, on rank 0 only, so the callback holds
    plain values until then (and pickles into spawned DDP processes).

    After fit, `pruned` is None, or {"epoch": e, "value": v} for a trial the pruner stopped.
    """

    def __init__(self, storage: str, study_name: str, number: int, pruner: Any, monitor: str) -> None:
        self.storage, self.study_name, self.number, self.pruner, self.monitor = storage, study_name, number, pruner, monitor
        self.pruned: dict[str, Any] | None = None
        self._trial: Any = None

    def _open(self) -> Any:
        """The trial, or False for a multi-objective study (Optuna prunes single-objective studies only)."""
        if self._trial is None:
            from optuna.trial import Trial

            from ferlab.search.study import load_study, make_pruner

            study = load_study(self.storage, self.study_name, make_pruner(self.pruner))
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == self.number)
            self._trial = Trial(study, frozen._trial_id) if len(study.directions) == 1 else False
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stop = self._report(trainer) if trainer.is_global_zero else False  # rank 0 asks the study ...
        if trainer.world_size > 1:  # ... and every rank stops with it (should_stop is not synced by Lightning)
            stop = trainer.strategy.broadcast(stop, src=0)
        trainer.should_stop = trainer.should_stop or bool(stop)

    def _report(self, trainer: pl.Trainer) -> bool:
        """Report this epoch's value to the trial; True when the pruner rejects it."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise FerlabError(f"pruning needs optimized_metric={self.monitor!r} logged at every validation epoch; "
                              f"logged: {', '.join(sorted(trainer.callback_metrics)) or 'nothing'}")
        trial, epoch = self._open(), trainer.current_epoch
        if not trial:
            return False
        trial.report(float(value), step=epoch)
        if self.pruned is None and trial.should_prune():
            self.pruned = {"epoch": epoch, "value": float(value)}
            log.info("trial %d pruned at epoch %d (%s=%.4f)", self.number, epoch, self.monitor, float(value))
        return self.pruned is not None

    def state_dict(self) -> dict[str, Any]:
        # carried back from spawned DDP processes with the other callbacks' states (ferlab.checkpoints.ddp)
        return {"pruned": self.pruned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned = state_dict.get("pruned")


def trial_callbacks(monitor: str | None) -> list[Callback]:
    """[OptunaPruning] when this job is a trial of ferlab's Optuna search, else []."""
    number = os.environ.get(TRIAL_ENV)
    if number is None or not monitor:
        return []
    from hydra.core.hydra_config import HydraConfig

    sweeper = HydraConfig.get().sweeper  # the sweeper hands its jobs the resolved storage and study name
    pruner = sweeper.get("pruner")
    from optuna.pruners import NopPruner

    from ferlab.search.study import make_pruner

    if isinstance(make_pruner(pruner), NopPruner):  # the sweeper's rule: nothing to report to, no metric per epoch
        return []
    return [OptunaPruning(sweeper.storage, sweeper.study_name, int(number), pruner, monitor)]


def pruned(trainer: pl.Trainer) -> dict[str, Any] | None:
    """{"epoch", "value"} when an OptunaPruning callback stopped this fit, else None."""
    return next((c.pruned for c in trainer.callbacks if isinstance(c, OptunaPruning) and c.pruned), None)
