"""The Optuna search of `FerlabSweeper`: the Optuna sweeper's grammar and trials, failures recorded, not fatal.

Imported only when a search runs (Hydra skips `_` modules when it scans for plugins), so optuna is not
imported by every `ferlab` command.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import TrialState

log = logging.getLogger(__name__)

INTERRUPTED = "ferlab_interrupted"  # user attr of trials a crashed sweep left running
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _impl(sweeper: Any) -> OptunaSweeperImpl:
    """Hydra's Optuna sweeper, set up to lend us its search-space parsing and trial configuration."""
    impl = OptunaSweeperImpl(**sweeper.optuna, search_space=None, params=sweeper.params or None)
    impl.config, impl.launcher, impl.hydra_context = sweeper.config, sweeper.launcher, sweeper.hydra_context
    impl.sweep_dir = sweeper.config.hydra.sweep.dir
    impl._process_searchspace_config()
    return impl


def _make_sqlite_dir(storage: Any) -> None:
    """SQLite creates the database file but not its folder."""
    url = str(storage or "")
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _fail_interrupted(study: optuna.Study) -> int:
    """Trials still RUNNING were cut off by a crash (one sweep per study at a time): mark them failed."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in stale:
        trial = optuna.trial.Trial(study, frozen._trial_id)
        trial.set_user_attr(INTERRUPTED, True)
        study.tell(trial, state=TrialState.FAIL)
    return len(stale)


def _finished(study: optuna.Study) -> int:
    """Trials that count towards n_trials: finished ones, not the interrupted."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED) if not t.user_attrs.get(INTERRUPTED))


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


def _record(study: optuna.Study, trial: optuna.trial.Trial, **outcome: Any) -> None:
    """study.tell, except that a GridSampler asking the study to stop (the grid is done) is no error here."""
    try:
        study.tell(trial, **outcome)
    except RuntimeError as e:  # Study.stop() is only allowed inside study.optimize
        if "Study.stop" not in str(e):
            raise


def _tell(study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn, n_objectives: int) -> bool:
    """Record one trial's outcome; a failure is recorded (and written as failed.json), never raised."""
    try:
        values = _values(ret, n_objectives)
    except (RuntimeError, ValueError, TypeError) as e:
        _record(study, trial, state=TrialState.FAIL)
        log.error("trial %d failed: %s", trial.number, e)
        if ret.status != JobStatus.FAILED and ret.hydra_cfg is not None:  # it ran, but gave nothing to optimize
            from ferlab.runfiles import write_failed

            write_failed(Path(ret.hydra_cfg.hydra.runtime.output_dir), e)
        return False
    _record(study, trial, state=TrialState.COMPLETE, values=values)
    return True


def _grid_sampler(impl: OptunaSweeperImpl, distributions: dict) -> None:
    """A GridSampler partial needs the search space, and caps n_trials at the grid's size."""
    if isinstance(impl.sampler, functools.partial) and impl.sampler.func is optuna.samplers.GridSampler:
        space = {name: impl._to_grid_sampler_choices(d) for name, d in distributions.items()}
        impl.sampler = impl.sampler(space)
        impl.n_trials = min(impl.n_trials, math.prod(len(v) for v in space.values()))


def _save_results(impl: OptunaSweeperImpl, study: optuna.Study, directions: list[str]) -> None:
    """optimization_results.yaml in the sweep dir: best parameters and value(s), trial counts."""
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in FINISHED}
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": str(impl.storage),
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
    OmegaConf.save(OmegaConf.create(results), Path(impl.sweep_dir) / "optimization_results.yaml")


def search(sweeper: Any, arguments: list[str]) -> None:
    """Run trials until the study has `n_trials` finished ones; failed trials count, crashed ones do not."""
    impl = _impl(sweeper)
    distributions, fixed = create_params_from_overrides([*impl._parse_sweeper_params_config(), *arguments])
    for name in fixed:
        distributions.pop(name, None)
    _grid_sampler(impl, distributions)
    directions = impl._get_directions()
    _make_sqlite_dir(impl.storage)
    Path(impl.sweep_dir).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=impl.study_name, storage=impl.storage, sampler=impl.sampler,
                                directions=directions, load_if_exists=True)
    interrupted, done = _fail_interrupted(study), _finished(study)
    to_go = max(0, impl.n_trials - done)
    log.info("study %s (%s): %d trials finished before, %d interrupted, %d to run",
             study.study_name, impl.storage or "in memory", done, interrupted, to_go)
    while to_go > 0:
        trials = [study.ask() for _ in range(min(to_go, impl.n_jobs))]
        overrides = impl._configure_trials(trials, distributions, fixed)
        # job numbers are trial numbers, so a resumed study never reuses a run dir name
        returns = impl.launcher.launch(overrides, initial_job_idx=trials[0].number)
        for trial, ret in zip(trials, returns, strict=True):
            _tell(study, trial, ret, len(directions))
        to_go -= len(trials)
    _save_results(impl, study, directions)
