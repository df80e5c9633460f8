"""ferlab's own callbacks: the per-epoch metric history behind metrics.json and the report plots."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


def scalars(metrics: dict) -> dict[str, float]:
    """The one-number entries of a Lightning metrics dict, as floats."""
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


class MetricsHistory(Callback):
    """Records every epoch's scalar metrics (train/*, val/*, lr-*); kept in checkpoints so resume continues it."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **scalars(trainer.callback_metrics)}
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # only into a fresh history (a resumed run): testing the best checkpoint after fit also loads callback
        # states, and must not cut the history back to that checkpoint's epoch
        if not self.history:
            self.history = list(state_dict.get("history", []))
