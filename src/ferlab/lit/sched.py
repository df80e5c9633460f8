"""Learning-rate schedules from config, with optional linear warmup, in Lightning's lr_scheduler format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ferlab.errors import FerlabError

AnyScheduler = LRScheduler | ReduceLROnPlateau


class LinearWarmup(LRScheduler):
    """Scales the learning rate linearly from `start_factor` x lr to lr over `warmup` steps, then hands over.

    `after` (any torch scheduler, ReduceLROnPlateau included, or None for a constant rate) is stepped only
    once the warmup is over, so its epochs count from there. `step(metrics)` passes the monitored value on.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, after: AnyScheduler | None, warmup: int, start_factor: float = 0.1
    ) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 steps, got {warmup}")
        if not 0.0 < start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in (0, 1], got {start_factor}")
        self.after, self.warmup, self.start_factor = after, warmup, start_factor
        super().__init__(optimizer)  # records base_lrs and applies step 0 (lr x start_factor)

    def get_lr(self) -> list[float]:
        done = min(self.last_epoch, self.warmup) / self.warmup
        factor = self.start_factor + (1.0 - self.start_factor) * done
        return [base * factor for base in self.base_lrs]

    def step(self, metrics: float | None = None) -> None:  # type: ignore[override]
        if self.last_epoch < self.warmup:
            super().step()
            return
        self.last_epoch += 1
        if isinstance(self.after, ReduceLROnPlateau):
            self.after.step(metrics)
        elif self.after is not None:
            self.after.step()
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "after")}
        state["after"] = self.after.state_dict() if self.after is not None else None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        after = state.pop("after", None)
        self.__dict__.update(state)
        if self.after is not None and after is not None:
            self.after.load_state_dict(after)


class Schedule:
    """Builds `scheduler(optimizer)` (a `_partial_` config) and wraps it for Lightning.

    Args:
        scheduler: partial of a torch scheduler, or None for a constant learning rate.
        interval: "epoch" or "step" (the unit of the scheduler's counters and of the warmup).
        monitor: metric for ReduceLROnPlateau (interpolated from the run's `monitor`).
        warmup_epochs: linear warmup from `warmup_start_factor` x lr over this many intervals (0: none);
            the scheduler starts counting after it, and a `T_max` (cosine) is shortened by it.
    """

    def __init__(
        self,
        scheduler: Callable[[torch.optim.Optimizer], AnyScheduler] | None = None,
        interval: str = "epoch",
        monitor: str = "val/acc",
        warmup_epochs: int = 0,
        warmup_start_factor: float = 0.1,
    ) -> None:
        if interval not in ("epoch", "step"):
            raise ValueError(f"sched.interval must be 'epoch' or 'step', got {interval!r}")
        if warmup_epochs < 0:
            raise ValueError(f"sched.warmup_epochs must be >= 0, got {warmup_epochs}")
        self.scheduler, self.interval, self.monitor = scheduler, interval, monitor
        self.warmup_epochs, self.warmup_start_factor = warmup_epochs, warmup_start_factor

    def __call__(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """Lightning's lr_scheduler dict for `optimizer`, or None for a constant learning rate."""
        if self.scheduler is None and self.warmup_epochs == 0:
            return None
        main = self.scheduler(optimizer) if self.scheduler is not None else None
        if self.warmup_epochs > 0:
            if hasattr(main, "T_max"):  # a cosine set to the run's length anneals over what is left of it
                main.T_max = max(1, main.T_max - self.warmup_epochs)
            sched = LinearWarmup(optimizer, main, self.warmup_epochs, self.warmup_start_factor)
        else:
            sched = main
        plateau = isinstance(main, ReduceLROnPlateau)
        config = {"scheduler": sched, "interval": self.interval, "frequency": 1, "reduce_on_plateau": plateau}
        if plateau:
            config["monitor"] = self.monitor
        return config


class DelayedStepLR(LRScheduler):
    """lr x gamma every `step_size` epochs once `start_epoch` is reached: lr_e = lr * gamma ** (max(0, e - start) //
    step_size). With start_epoch 0 it is StepLR; WuJie's FER2013 recipe decays x0.9 every 5 epochs after epoch 80."""

    def __init__(self, optimizer: torch.optim.Optimizer, step_size: int, gamma: float = 0.1, start_epoch: int = 0,
                 last_epoch: int = -1) -> None:
        if step_size < 1 or start_epoch < 0 or gamma <= 0:
            raise FerlabError(f"sched.scheduler: step_size >= 1, start_epoch >= 0 and gamma > 0 expected, got {step_size}, "
                             f"{start_epoch}, {gamma}")
        self.step_size, self.gamma, self.start_epoch = step_size, gamma, start_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        decays = max(0, self.last_epoch - self.start_epoch) // self.step_size
        return [base * self.gamma**decays for base in self.base_lrs]


class PiecewiseLR(LRScheduler):
    """A constant factor of the initial lr per range of epochs: `factors[i]` from `milestones[i-1]` on (factors has
    one more entry than milestones). Barsoum's FER+ schedule 0.05 -> 0.025 (epoch 20) -> 0.005 (epoch 40) is
    milestones [20, 40], factors [1.0, 0.5, 0.1]; unlike MultiStepLR, each step may change the rate by its own factor."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: list[int], factors: list[float],
                 last_epoch: int = -1) -> None:
        if len(factors) != len(milestones) + 1 or list(milestones) != sorted(milestones) or min(factors) <= 0:
            raise FerlabError(f"sched.scheduler: increasing milestones and one more positive factor expected, got {milestones}, "
                             f"{factors}")
        self.milestones, self.factors = list(milestones), list(factors)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        index = sum(self.last_epoch >= m for m in self.milestones)
        return [base * self.factors[index] for base in self.base_lrs]
