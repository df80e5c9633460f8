"""The Optuna search of `FerlabSweeper`: one study that any number of workers share, failures recorded, not fatal.

Each worker (one `ferlab train -m hparams_search=optuna ...` process) asks the study for its next trials, runs
them through the launcher and tells the outcome, until the study has `n_trials` counted trials (Optuna's
MaxTrialsCallback rule: every worker counts the finished trials of all workers before asking, so a study ends
with at most one extra trial per extra worker). The worker keeps its running trials' heartbeats; a worker
that died leaves trials whose heartbeat stops, and the next worker to look fails them after the grace period and
queues a retry with the same parameters. A starting worker never touches trials whose heartbeat is alive.

Imported only when a search runs (Hydra skips `_` modules when it scans for plugins), so optuna is not
imported by every `ferlab` command.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import socket
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import Trial, TrialState

from ferlab.errors import FerlabError, Preempted, stop_status
from ferlab.search.study import absolute_url, make_pruner, open_storage, safe_url, state_counts
from ferlab.search.trial import RUN_ATTR, TRIAL_ENV, Pruned
from hydra_plugins.ferlab_sweepers._space import grid_choices, parse_space, trial_overrides

log = logging.getLogger(__name__)

INTERRUPTED = "ferlab_interrupted"  # user attr of trials an earlier ferlab failed because they were left running
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _quoted(text: str) -> str:
    """`text` as a quoted value of Hydra's override grammar (backslashes before a quote or the end doubled)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def _directions(direction: Any) -> list[str]:
    items = list(direction) if isinstance(direction, (list, tuple)) or OmegaConf.is_list(direction) else [direction]
    names = [str(getattr(d, "name", d)).lower() for d in items]
    bad = [n for n in names if n not in ("minimize", "maximize")]
    if bad:
        raise FerlabError(f"hydra.sweeper.direction={direction}: expected minimize or maximize (or a list of them)")
    return names


def _seeded(seed: int, number: int) -> int:
    """A sampler seed per trial number: workers sharing a study and a seed never draw the same random values."""
    return int(np.random.SeedSequence([int(seed), number]).generate_state(1)[0])


def _samplers(sweeper: Any, space: dict[str, BaseDistribution]) -> tuple[Callable[[int], Any], int | None]:
    """(the sampler for trial number n, the grid's size for Optuna's GridSampler, else None).

    A sampler config with a `seed` is instantiated per trial with a seed derived from it and the trial number:
    one worker is as reproducible as before, and several workers with the same `seed` explore different points.
    """
    configured = sweeper.optuna["sampler"]
    node = OmegaConf.select(sweeper.config, "hydra.sweeper.sampler")
    grid = None
    if isinstance(configured, functools.partial) and configured.func is optuna.samplers.GridSampler:
        grid = {name: grid_choices(name, dist) for name, dist in space.items()}
    seed = node.get("seed") if OmegaConf.is_dict(node) else None

    def build(number: int) -> Any:
        sampler = instantiate(node, seed=_seeded(seed, number)) if seed is not None else configured
        return sampler(grid) if grid is not None else sampler

    return build, (math.prod(len(v) for v in grid.values()) if grid is not None else None)


def _continued(trial: Trial) -> Path | None:
    """The run dir a retried trial continues: its original's, when a stop (Ctrl-C, a signal, a lost worker) left a
    last.ckpt there. Optuna gives a retry a new number; its run goes on in the same dir from the saved step."""
    from ferlab.runs.runfiles import LAST

    origin = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")  # set by Optuna's retry
    run = (trial.user_attrs.get(RUN_ATTR) or {}).get("dir")  # the original's, copied into its retry
    if origin is None or not run or not (Path(run) / LAST).is_file():
        return None
    log.info("trial %d continues trial %d from %s", trial.number, origin, Path(run) / LAST)
    return Path(run)


def _suggest(trial: Trial, name: str, dist: BaseDistribution) -> None:
    if isinstance(dist, CategoricalDistribution):
        trial.suggest_categorical(name, dist.choices)
    elif isinstance(dist, IntDistribution):
        trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    else:
        trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _open_study(settings: dict, storage: Any, url: str, directions: list[str], sampler: Any) -> optuna.Study:
    """The study, created by the first worker and loaded by the others; FerlabError if its directions differ."""
    study = optuna.create_study(study_name=settings["study_name"], storage=storage, sampler=sampler,
                                directions=directions, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise FerlabError(f"study {study.study_name!r} in {safe_url(url)} was created to {' and '.join(have)}, "
                          f"this search would {' and '.join(directions)} (hydra.sweeper.direction); "
                          "give the search another hydra.sweeper.study_name")
    return study


def _counted(study: optuna.Study) -> tuple[int, dict[str, int]]:
    """Trials counting towards n_trials (finished, not retried, not cut off by a crash in an earlier ferlab), and
    the study's trials by state."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    counted = sum(1 for t in trials if t.state in COUNTED and t.number not in retried and not t.user_attrs.get(INTERRUPTED))
    return counted, state_counts(trials)


class _Heartbeat:
    """Records the heartbeat of this worker's running trials while the launcher runs them (what Optuna's
    `study.optimize` does for each trial), so other workers can tell them from those of a dead worker."""

    def __init__(self, storage: Any, trials: list[Trial]) -> None:
        self.storage, self.trials = storage, trials
        self.interval = storage.get_heartbeat_interval()
        self.stop, self.thread = threading.Event(), threading.Thread(target=self._loop, daemon=True)

    def _beat(self) -> None:
        for trial in self.trials:
            try:
                self.storage.record_heartbeat(trial._trial_id)
            except Exception as e:  # a busy database, or a trial another worker failed: the next beat retries
                log.warning("heartbeat of trial %d not recorded: %s", trial.number, e)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self._beat()

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self._beat()
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def _launch(launcher: Any, trials: list[Trial], overrides: list[list[str]]) -> list[JobReturn]:
    """Launch the jobs, each run of consecutive trial numbers at once, so a job's number is its trial's number
    (other workers' trials can fall in between: one batch may then be launched in pieces)."""
    returns: list[JobReturn] = []
    start = 0
    while start < len(trials):
        end = start + 1
        while end < len(trials) and trials[end].number == trials[end - 1].number + 1:
            end += 1
        returns += launcher.launch(overrides[start:end], initial_job_idx=trials[start].number)
        start = end
    return returns


def _run_info(ret: JobReturn, recorded: dict | None = None) -> dict[str, Any]:
    """What the study keeps about a trial's run: dir (the one `_configure` recorded, else the job's), host,
    headline metrics (metrics.json) or error."""
    from ferlab.runs.runfiles import headline_metrics, read_metrics

    info: dict[str, Any] = {"host": socket.gethostname()}
    if ret.hydra_cfg is not None or (recorded or {}).get("dir"):
        run_dir = Path((recorded or {}).get("dir") or ret.hydra_cfg.hydra.runtime.output_dir)
        info["dir"] = str(run_dir)
        if (run_dir / "metrics.json").is_file():
            data = read_metrics(run_dir)
            info["metrics"] = {**headline_metrics(data), "epochs": data.get("epochs"), "wall_time_s": data.get("wall_time_s")}
    if ret.status == JobStatus.FAILED:
        info["error"] = f"{type(ret._return_value).__name__}: {ret._return_value}"
    return info


def _values(ret: JobReturn, n_objectives: int) -> list[float]:
    """The job's objective value(s); a failed job, a missing or a non-finite value raises with the reason."""
    if ret.status == JobStatus.FAILED:
        raise RuntimeError(f"{type(ret._return_value).__name__}: {ret._return_value}")
    value = ret.return_value
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) != n_objectives or any(v is None for v in values):
        raise ValueError(f"returned {value!r}; expected {n_objectives} number(s) (is optimized_metric logged?)")
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"returned a non-finite value {values}")
    return values


def _record(study: optuna.Study, trial: Trial, info: dict, **outcome: Any) -> None:
    """Store the run info and tell the outcome. A trial another worker failed meanwhile (its heartbeat came too
    late) stays failed; a GridSampler asking the study to stop (the grid is done) is no error here."""
    try:
        trial.set_user_attr(RUN_ATTR, info)
        study.tell(trial, **outcome)
    except UpdateFinishedTrialError:
        log.warning("trial %d was failed by another worker (heartbeat late); its run stays in %s",
                    trial.number, info.get("dir"))
    except RuntimeError as e:  # Study.stop() is only allowed inside study.optimize
        if "Study.stop" not in str(e):
            raise


def _tell(study: optuna.Study, trial: Trial, ret: JobReturn, n_objectives: int) -> None:
    """Record one trial's outcome: complete, pruned, or failed (then also written as failed.json), never raised."""
    info = _run_info(ret, trial.user_attrs.get(RUN_ATTR))
    if ret.status != JobStatus.FAILED and isinstance(ret.return_value, Pruned):
        _record(study, trial, info, state=TrialState.PRUNED)
        return
    try:
        values = _values(ret, n_objectives)
    except (RuntimeError, ValueError, TypeError) as e:
        info.setdefault("error", str(e))
        _record(study, trial, info, state=TrialState.FAIL)
        log.error("trial %d failed: %s", trial.number, e)
        if ret.status != JobStatus.FAILED and ret.hydra_cfg is not None:  # it ran, but gave nothing to optimize
            from ferlab.runs.runfiles import write_failed

            write_failed(Path(ret.hydra_cfg.hydra.runtime.output_dir), e)
        return
    _record(study, trial, info, state=TrialState.COMPLETE, values=values)


def _abandon(study: optuna.Study, trials: list[Trial], max_retry: int | None, retry: bool) -> None:
    """This worker stops mid-batch (Ctrl-C, a launcher error, a mistake in the search space): fail its running
    trials now and, unless it was a mistake of the user's, queue their retries as the heartbeat would have after
    the grace period, so the next worker runs them again."""
    mine = {t.number for t in trials}
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number in mine]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        # the storage's own retry callback (open_storage made it with max_retry) when heartbeats are on
        again = study._storage.get_heartbeat_stale_trial_callback() or RetryHeartbeatStaleTrialCallback(max_retry)
        for frozen in running:
            study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
            if retry:  # the retry copies number, parameters and attributes, which failing the trial left as they were
                again(study, frozen)


def _save_results(sweep_dir: Path, study: optuna.Study, url: str, directions: list[str]) -> None:
    """optimization_results.yaml in the sweep dir: best parameters and value(s) of the whole study, trial counts."""
    states = state_counts(study.get_trials(deepcopy=False))
    counts = {s.name.lower(): states.get(s.name.lower(), 0) for s in COUNTED}
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": safe_url(url),
                               "trials": counts}
    if counts["complete"] == 0:
        log.error("no trial of study %s completed", study.study_name)
    elif len(directions) == 1:
        best = study.best_trial
        results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
        log.info("Best parameters: %s", best.params)
        log.info("Best value: %s (trial %d)", best.value, best.number)
    else:
        results["solutions"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
    from ferlab.runs.io import atomic_write_text

    atomic_write_text(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results)))


class _Search:
    """One worker's part of the study: settings, search space, storage, the loop."""

    def __init__(self, sweeper: Any, arguments: list[str]) -> None:
        s = self.settings = sweeper.optuna
        self.sweeper, self.sweep_dir = sweeper, Path(sweeper.config.hydra.sweep.dir)
        self.space, self.fixed = parse_space([*sweeper._parse_config(), *arguments], sweeper.hydra_context.config_loader)
        self.directions = _directions(s["direction"])
        pruner = make_pruner(s["pruner"])  # checked here, before any study is created or any job runs
        if len(self.directions) > 1 and not isinstance(pruner, optuna.pruners.NopPruner):
            raise FerlabError(f"hydra.sweeper.pruner={s['pruner']}: Optuna prunes single-objective studies only")
        self.sampler_for, grid_size = _samplers(sweeper, self.space)
        self.n_trials = min(s["n_trials"], grid_size) if grid_size is not None else s["n_trials"]
        self.extend = get_method(s["custom_search_space"]) if s["custom_search_space"] else None
        # no storage: a journal file in the sweep dir, so pruning and `ferlab report --study` work all the same
        self.url = absolute_url(str(s["storage"] or f"journal:///{self.sweep_dir / 'optuna.journal'}"))
        self.storage = open_storage(self.url, s["heartbeat_interval"], s["grace_period"], s["max_retry"])
        self.study = _open_study(s, self.storage, self.url, self.directions, self.sampler_for(0))
        # every job reports to this study, whatever its own config would interpolate
        self.job_overrides = [f"hydra.sweeper.storage={_quoted(self.url)}",
                              f"hydra.sweeper.study_name={_quoted(self.study.study_name)}"]

    def _ask(self) -> Trial:
        """The next trial (a queued retry first), its sampler seeded for its number (the next number guessed
        before `ask` for the sampler's `before_trial`, e.g. GridSampler's pick; built again only when another worker's
        trial took that number)."""
        guess = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = self.sampler_for(guess)
        with warnings.catch_warnings():  # Optuna expects heartbeats from study.optimize; this loop keeps them
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            trial = self.study.ask()
        if self.storage.get_heartbeat_interval():
            self.storage.record_heartbeat(trial._trial_id)  # at once, as Optuna's loop does: a trial that never
            # had a heartbeat is never failed as stale, so a worker killed before its first beat would strand it
        if trial.number != guess:
            self.study.sampler = self.sampler_for(trial.number)
        return trial

    def _configure(self, trial: Trial) -> list[str]:
        """The trial's job overrides; its run dir is recorded at once, so that a retry (which copies the trial's
        attributes) knows the run to continue when this one is stopped."""
        for name, dist in self.space.items():
            _suggest(trial, name, dist)
        overrides = trial_overrides(trial, self.fixed, self.extend, self.sweeper.config)
        continued = _continued(trial)
        resume = [f"ckpt_path={_quoted(str(continued))}"] if continued else []
        overrides = [*overrides, *resume, *self.job_overrides, f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"]
        run = continued or self.sweeper._job_dir(overrides, trial.number)
        trial.set_user_attr(RUN_ATTR, {"dir": str(run), "host": socket.gethostname()})
        return overrides

    def run(self) -> None:
        counted, states = _counted(self.study)
        log.info("study %s in %s: %d of %d trials counted (%s); this worker runs up to %d at a time",
                 self.study.study_name, safe_url(self.url), counted, self.n_trials,
                 ", ".join(f"{n} {s}" for s, n in states.items()) or "new", self.settings["n_jobs"])
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        # the command line, as the grid saves it: TensorBoard names each trial by its searched keys (ferlab.search.tbname)
        OmegaConf.save(self.sweeper.config, self.sweep_dir / "multirun.yaml")
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                fail_stale_trials(self.study)  # trials of dead workers: failed, and their retries queued
            to_go = self.n_trials - _counted(self.study)[0]
            if to_go <= 0:
                break
            trials = [self._ask() for _ in range(min(self.settings["n_jobs"], to_go))]
            try:
                overrides = [self._configure(trial) for trial in trials]
                with _Heartbeat(self.storage, trials):
                    returns = _launch(self.sweeper.launcher, trials, overrides)
            except BaseException as e:
                _abandon(self.study, trials, self.settings["max_retry"], retry=not isinstance(e, FerlabError))
                raise
            for trial, ret in zip(trials, returns, strict=True):
                _tell(self.study, trial, ret, len(self.directions))
        _save_results(self.sweep_dir, self.study, self.url, self.directions)


def search(sweeper: Any, arguments: list[str]) -> None:
    """Run this worker's share of the study; a user mistake (bad storage, direction, pruner) is one line."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the study line below says what Optuna would say
    try:
        _Search(sweeper, arguments).run()
    except FerlabError as e:
        print(f"ferlab: error: {e}", file=sys.stderr)
        sys.exit(1)
    except (Preempted, KeyboardInterrupt) as stop:  # Ctrl-C or a signal: this worker stops asking for trials
        code = stop_status(stop)
        print(f"ferlab: error: search stopped ({stop or 'interrupted'}); this worker's running trials are failed "
              "and queued to run again: the same command continues the study", file=sys.stderr)
        sys.exit(code)
