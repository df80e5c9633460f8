"""What ferlab's Optuna search and its trial jobs share, light enough for every job to import.

The sweeper names a job's trial in the job's environment (`hydra.job.env_set`); a job the pruner stopped
returns `Pruned` instead of its metric, so the sweeper records the trial as pruned, not failed.
"""

from __future__ import annotations

from dataclasses import dataclass

TRIAL_ENV = "FERLAB_OPTUNA_TRIAL"  # the trial number of the study in hydra.sweeper.storage / study_name
RUN_ATTR = "ferlab_run"  # the trial's user attribute the sweeper fills: run dir, host, headline metrics or error


@dataclass(frozen=True)
class Pruned:
    """A trial job's outcome when the pruner stopped it: the epoch and the last value it reported."""

    epoch: int
    value: float


def objective_value(metrics: dict, name: str | None) -> float | None:
    """The value a trial job returns for `optimized_metric` `name`: its test value, else the best epoch's, else the
    last epoch's; None when the run did not log it."""
    if not name:
        return None
    for group in ("test", "best_epoch_metrics", "final"):
        if name in metrics.get(group, {}):
            return metrics[group][name]
    return None
