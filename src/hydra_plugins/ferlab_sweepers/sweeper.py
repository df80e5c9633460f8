"""Grid sweeps and Optuna searches in which a failed job never stops the sweep.

Hydra's basic sweeper raises the first failure once a batch is done, and its Optuna sweeper aborts the search
at the first failed trial. Here every job runs; failed jobs leave `failed.json` in their run dir, Optuna
records them as failed trials and goes on, and `ferlab.search.sweep.SweepSummary` (a Hydra callback) lists them
at the end and makes the exit status non-zero. A job stopped by a signal (Ctrl-C, SIGTERM) stops the grid: no
further job starts, each one left is marked not started in its run dir, and the summary says how to continue.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from ferlab.errors import Preempted, stop_status
from hydra_plugins.ferlab_sweepers._composed import ComposedJobs

log = logging.getLogger(__name__)


class FerlabSweeper(BasicSweeper):
    """A grid over `params` and the command line (as Hydra's basic sweeper), or an Optuna search.

    Args:
        max_batch_size: grid jobs handed to the launcher at once (None: all of them).
        params: overrides swept by default: comma lists for a grid ({"seed": "1,2,3"}), or Optuna's grammar
            for a search ({"optim.lr": "tag(log, interval(1e-4, 1e-1))"}, choice, range).
        sampler: None for a grid; an Optuna sampler (instantiated by Hydra) makes this an Optuna search, with
            the Optuna sweeper's other settings: direction, study_name, storage (sqlite:///path/study.db, a
            database URL, or journal:///path/study.log; shared by every worker with the same study_name),
            n_trials (counted trials the study should reach, whichever worker ran them), n_jobs (trials this
            worker launches together), custom_search_space; and ferlab's: pruner (none, median,
            successive_halving, hyperband, or a `_target_` config), heartbeat_interval and grace_period
            (seconds; a trial without a heartbeat for the grace period is failed) and max_retry (retries of such
            a trial, with the same parameters).
    """

    def __init__(
        self, max_batch_size: int | None = None, params: Mapping[str, str] | None = None, sampler: Any = None,
        direction: Any = "maximize", study_name: str | None = None, storage: Any = None, n_trials: int = 20,
        n_jobs: int = 1, custom_search_space: str | None = None, pruner: Any = None,
        heartbeat_interval: int = 30, grace_period: int | None = None, max_retry: int | None = 2,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.optuna = None if sampler is None else {
            "sampler": sampler, "direction": direction, "study_name": study_name, "storage": storage,
            "n_trials": n_trials, "n_jobs": n_jobs, "custom_search_space": custom_search_space, "pruner": pruner,
            "heartbeat_interval": heartbeat_interval, "grace_period": grace_period, "max_retry": max_retry}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # the launcher's loader hands it the job configs the batch check composed (each job composed once)
        self.composed = ComposedJobs(hydra_context.config_loader)
        super().setup(hydra_context=HydraContext(self.composed, hydra_context.callbacks), task_function=task_function,
                      config=config)

    def sweep(self, arguments: list[str]) -> Any:
        if self.optuna is not None:
            from hydra_plugins.ferlab_sweepers._optuna import search

            return search(self, arguments)
        return self._grid(arguments)

    def _grid(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Every combination, batch by batch; unlike BasicSweeper, failed jobs are not re-raised."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, job_idx = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.composed.check(self.config, batch)  # a bad group name fails here, before any job runs
            try:
                results = self.launcher.launch(batch, initial_job_idx=job_idx)
            except (Preempted, KeyboardInterrupt) as stop:  # a job stopped by a signal: start no further job
                with contextlib.suppress(ValueError):  # not the main thread: signals are not ours to handle
                    signal.signal(signal.SIGINT, _exit_now(stop))
                self._mark_not_started([*batch, *(job for b in self.overrides[self.batch_index:] for job in b)],
                                       job_idx)
                break
            job_idx += len(batch)
            returns.append(results)
        return returns

    def _job_dir(self, overrides: Sequence[str], idx: int) -> Path:
        """The run dir Hydra gives job `idx`: composed as the launcher does, unless the subdir is the job number."""
        sweep = OmegaConf.to_container(self.config.hydra.sweep, resolve=False)
        if sweep["subdir"] in ("${hydra.job.num}", "${hydra.job.id}"):  # ferlab's default: no composition needed
            return Path(self.config.hydra.sweep.dir) / str(idx)
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = idx
        return Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)

    def _mark_not_started(self, jobs: list[Sequence[str]], first_idx: int) -> None:
        """Mark each job without a run dir yet as not started, in the run dir Hydra would give it."""
        from ferlab.search.sweep import mark_not_started

        for idx, overrides in enumerate(jobs, start=first_idx):
            job_dir = self._job_dir(overrides, idx)
            if not (job_dir / ".hydra").exists():
                mark_not_started(job_dir, list(overrides))


def _exit_now(stop: BaseException) -> Any:
    """A SIGINT handler for the sweep's wrap-up after a stop: another Ctrl-C ends the process with the stop's
    status at once, without a traceback (what is written is written atomically)."""
    code = stop_status(stop)

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(code)

    return handler
