"""Learning-rate schedules from config, with optional linear warmup, in Lightning's lr_scheduler format."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LinearLR, LRScheduler, ReduceLROnPlateau, SequentialLR


class Schedule:
    """Builds `scheduler(optimizer)` (a `_partial_` config) and wraps it for Lightning.

    Args:
        scheduler: partial of a torch scheduler, or None for a constant learning rate.
        interval: "epoch" or "step".
        monitor: metric for ReduceLROnPlateau (interpolated from the run's `monitor`).
        warmup_epochs: linear warmup from `warmup_start_factor` x lr over this many intervals (0: none).
    """

    def __init__(
        self,
        scheduler: Callable[[torch.optim.Optimizer], LRScheduler] | None = None,
        interval: str = "epoch",
        monitor: str = "val/acc",
        warmup_epochs: int = 0,
        warmup_start_factor: float = 0.1,
    ) -> None:
        self.scheduler, self.interval, self.monitor = scheduler, interval, monitor
        self.warmup_epochs, self.warmup_start_factor = warmup_epochs, warmup_start_factor

    def __call__(self, optimizer: torch.optim.Optimizer) -> dict | None:
        if self.scheduler is None and self.warmup_epochs == 0:
            return None
        main = self.scheduler(optimizer) if self.scheduler is not None else None
        if self.warmup_epochs > 0 and not isinstance(main, ReduceLROnPlateau):
            warm = LinearLR(optimizer, self.warmup_start_factor, 1.0, total_iters=self.warmup_epochs)
            main = warm if main is None else SequentialLR(optimizer, [warm, main], milestones=[self.warmup_epochs])
        config = {"scheduler": main, "interval": self.interval, "frequency": 1}
        if isinstance(main, ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return config
