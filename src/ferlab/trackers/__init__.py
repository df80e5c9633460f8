"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases (`logger=mlflow`, `wandb`, `many`).

conf/logger/mlflow.yaml and wandb.yaml name the factories in `ferlab.trackers.mlflow_run` and `wandb_run`, which
return Lightning's own MLFlowLogger and WandbLogger. A `ferlab train` run is a tracker session (`tracked(run_train)`):
the factories start their tracker run at once, and each gets the flattened resolved config as
its parameters, tags (run dir, sweep folder, ferlab version and commit, Optuna trial) and its id in
`<run>/trackers.json`, so that a resumed run (`ckpt_path=auto`, a run dir, `last`) continues the same tracker run.
At the end of the session each gets the run's files as artifacts and its status: FINISHED, FAILED (a crash) or
KILLED (stopped by a signal). A tracker that cannot be reached at the start is left out, the run logs locally, and
the session ends with one warning line naming it.

Light on purpose: mlflow and wandb are imported only by the factories; this module is imported by every
`ferlab train`.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ferlab.errors import FerlabError, Preempted, stop_status

log = logging.getLogger("ferlab.trackers")

STORE = "trackers.json"  # in the run dir: the id of each tracker run, so that a resumed run continues it
# a factory's `_target_` -> (the package it needs, the ferlab extra that installs it)
PACKAGES = {
    "ferlab.trackers.mlflow_run.mlflow_logger": ("mlflow", "mlflow"),
    "ferlab.trackers.wandb_run.wandb_logger": ("wandb", "wandb"),
}
GROUP = "logger"
# what the end of a finished run hands its tracker runs: run-dir file -> artifact folder
ARTIFACTS = {"metrics.json": "", "eval/report.json": "eval", "eval/report.md": "eval",
             "eval/confusion_matrix.png": "eval", ".hydra/config.yaml": "hydra", ".hydra/overrides.yaml": "hydra"}


# ---- before anything runs: the logger names and the packages they need ------------------------------------------

def _installed(package: str) -> bool:
    if package in sys.modules:  # None there means "not importable" (how tests hide a package)
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def require(package: str, extra: str, key: str) -> None:
    """FerlabError naming the extra to install when `package` (a tracker's client) cannot be imported."""
    if not _installed(package):
        raise FerlabError(f"{key} needs the {package} package, which is not installed: pip install 'ferlab[{extra}]'")


def require_packages(cfg: DictConfig) -> None:
    """Every tracker the config's `logger` group names has its package; else one line naming the extra."""
    for name, node in (cfg.get(GROUP) or {}).items():
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if target in PACKAGES:
            require(*PACKAGES[target], key=f"{GROUP}.{name}")


def logger_options(argv: list[str]) -> list[str]:
    """The `logger=` options: ferlab's conf/logger/*.yaml and those of the user's config folders."""
    from ferlab.config.searchpath import _flag_value, _searchpath_dirs, conf_root, default_user_dir

    given = _flag_value(argv)
    folders = [conf_root(), *([Path(given)] if given else [p for p in [default_user_dir()] if p])]
    folders += [Path(p) for p in _searchpath_dirs(argv)]
    return sorted({p.stem for folder in folders for p in (folder / GROUP).glob("*.yaml")})


def _chosen(value: Any) -> Iterator[str]:
    """The option names of a parsed `logger=` value: a name, a list, or a sweep over either."""
    from hydra.core.override_parser.types import ChoiceSweep

    if isinstance(value, ChoiceSweep):
        value = value.list
    if isinstance(value, list):
        for item in value:
            yield from _chosen(item)
    elif isinstance(value, str):
        yield value


def unknown_logger(argv: list[str]) -> str | None:
    """'logger=nope: no such logger; available: ...' for the first unknown name of a `logger=` override, else
    None (overrides Hydra cannot parse are left to Hydra's message)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    given = [a for a in argv if not a.startswith("-") and a.partition("=")[0].lstrip("+") == GROUP]
    if not given:
        return None
    options = logger_options(argv)
    for arg in given:
        try:
            value = OverridesParser.create().parse_override(arg).value()
        except HydraException:
            continue
        missing = [name for name in _chosen(value) if name not in options]
        if missing:
            return f"{GROUP}={missing[0]}: no such logger; available: {', '.join(options)}"
    return None


def with_logger_check(entry: Callable[..., Any]) -> Callable[..., Any]:
    """A Hydra entry point whose command line is checked for unknown `logger=` names first (Hydra's own message
    runs over a dozen lines)."""

    @functools.wraps(entry)
    def checked(*args: Any, **kwargs: Any) -> Any:
        problem = unknown_logger(sys.argv[1:])
        if problem:
            print(f"ferlab: error: {problem}", file=sys.stderr)
            sys.exit(2)
        return entry(*args, **kwargs)

    return checked


# ---- what every tracker run records ------------------------------------------------------------------------------

def _multirun() -> Any:
    """Hydra's config of this job when it is part of a sweep (-m), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def run_name(run_dir: Path) -> str:
    """TensorBoard's name for the run: the swept overrides in a sweep (ferlab.search.tbname), else the run dir's name."""
    from ferlab.search.tbname import sweep_run_name

    name = sweep_run_name()
    if name:
        return name
    return f"{run_dir.parent.name}/{run_dir.name}" if _multirun() is not None else run_dir.name


def sweep_dir() -> Path | None:
    """This job's sweep folder, None outside a sweep."""
    hydra = _multirun()
    return Path(hydra.sweep.dir).resolve() if hydra is not None else None


def trial() -> tuple[int, str] | None:
    """(number, study name) of the Optuna trial this job runs, None when it is not one."""
    import os

    from ferlab.search.trial import TRIAL_ENV

    number, hydra = os.environ.get(TRIAL_ENV), _multirun()
    if number is None or hydra is None:
        return None
    return int(number), str(hydra.sweeper.get("study_name"))


def run_tags(run_dir: Path, labels: Any = ()) -> dict[str, str]:
    """Tags of a tracker run: its run dir, sweep folder and job, the ferlab version and git commit, the config's
    `tags`, and the Optuna trial it runs."""
    from ferlab.runs.version import version_info

    info = version_info()
    tags = {"ferlab.run_dir": str(Path(run_dir).resolve()), "ferlab.version": str(info["version"])}
    if info["commit"]:
        tags["ferlab.commit"] = str(info["commit"]) + ("+modified" if info["modified"] else "")
    if (sweep := sweep_dir()) is not None:
        tags["ferlab.sweep"], tags["ferlab.job"] = str(sweep), Path(run_dir).name
    if labels:
        tags["ferlab.tags"] = ",".join(str(t) for t in labels)
    if (found := trial()) is not None:
        tags["optuna.trial"], tags["optuna.study"] = str(found[0]), found[1]
    return tags


def param_text(value: Any) -> str:
    """A config value as a parameter string, as it would be typed in an override: null, true, 0.001, [1, 2]."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {"data.batch_size": 64, ...}: dotted keys, leaves as they are (an empty dict is a leaf)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain containers, interpolations resolved (what the run used)."""
    return OmegaConf.to_container(cfg, resolve=True)


# ---- the run ids kept in the run dir -----------------------------------------------------------------------------

def stored_run(run_dir: Path, kind: str) -> dict[str, Any] | None:
    """What <run>/trackers.json keeps about the run's `kind` ("mlflow", "wandb") tracker run, if anything."""
    path = Path(run_dir) / STORE
    try:
        entry = json.loads(path.read_text()).get(kind) if path.is_file() else None
    except (OSError, ValueError, AttributeError):  # unreadable: a new tracker run, not a failed training run
        log.warning("%s is not readable: a new tracker run is started", path)
        return None
    return entry if isinstance(entry, dict) else None


def store_run(run_dir: Path, kind: str, entry: dict[str, Any]) -> None:
    """Record the `kind` tracker run of this run dir in trackers.json (written atomically, other kinds kept)."""
    from ferlab.runs.runfiles import write_json

    path = Path(run_dir) / STORE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    write_json(path, {**(data if isinstance(data, dict) else {}), kind: entry})


# ---- the session: one `ferlab train` run ------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """How a run ended, for its tracker runs: MLflow's status name, W&B's exit code, the metrics (None after a
    failure) and, for an Optuna trial, the state the study records."""

    status: str
    exit_code: int
    run_dir: Path
    metrics: dict[str, Any] | None = None
    trial_state: str | None = None


def _finished(cfg: DictConfig, metrics: dict[str, Any]) -> Outcome:
    from ferlab.search.trial import objective_value

    state = None
    if trial() is not None:
        value = objective_value(metrics, cfg.get("optimized_metric"))
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        state = "pruned" if metrics.get("pruned") else "complete" if finite else "fail"
    return Outcome("FINISHED", 0, Path(cfg.paths.output_dir), metrics, state)


def _stopped(cfg: DictConfig, error: BaseException) -> Outcome:
    """A signal (Preempted, Interrupted, Ctrl-C) is KILLED with its exit status; anything else FAILED."""
    run_dir = Path(cfg.paths.output_dir)
    state = "fail" if trial() is not None else None
    if isinstance(error, (Preempted, KeyboardInterrupt)):
        return Outcome("KILLED", stop_status(error), run_dir, None, state)
    if isinstance(error, SystemExit) and not error.code:
        return Outcome("FINISHED", 0, run_dir, None, state)
    return Outcome("FAILED", 1, run_dir, None, state)


@dataclass
class Session:
    """The tracker runs started during one `ferlab train` run, and the warnings to print at its end."""

    cfg: DictConfig
    runs: list[Any] = field(default_factory=list)  # loggers with `close(outcome)`
    warnings: list[str] = field(default_factory=list)

    def close(self, outcome: Outcome) -> None:
        for logger in self.runs:
            try:
                logger.close(outcome)
            except Exception as e:  # the run's own files are written; the tracker only lost its ending
                self.warnings.append(f"{logger.describe()}: could not record the end of the run ({one_line(e)})")
        for message in self.warnings:
            log.warning(message)


_SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar("ferlab_trackers", default=None)


def current() -> Session | None:
    """The session of the `ferlab train` run in progress, if any."""
    return _SESSION.get()


def warn(message: str) -> None:
    """A warning printed once at the end of the run in progress (at once outside a run)."""
    session = current()
    if session is None:
        log.warning(message)
    else:
        session.warnings.append(message)


def one_line(error: BaseException) -> str:
    """An exception in one short line: the OS error underneath (connection refused) when there is one."""
    from ferlab.lit.user_errors import error_line

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = error_line(error)
    return text if len(text) <= 200 else text[:197] + "..."


def tracked(run: Callable[[DictConfig], dict[str, Any]]) -> Callable[[DictConfig], dict[str, Any]]:
    """`run_train` as a tracker session: every tracker run it starts is ended with the run's outcome."""

    @functools.wraps(run)
    def call(cfg: DictConfig) -> dict[str, Any]:
        session = Session(cfg)
        token = _SESSION.set(session)
        try:
            metrics = run(cfg)
        except BaseException as e:
            session.close(_stopped(cfg, e))
            raise
        else:
            session.close(_finished(cfg, metrics))
            return metrics
        finally:
            _SESSION.reset(token)

    return call


def started(logger: Any) -> None:
    """A factory's tracker run has started: it is ended with the session."""
    session = current()
    if session is not None:
        session.runs.append(logger)


def local_only(loggers: list[Any], run_dir: Path) -> list[Any]:
    """The loggers `build` made, without the trackers left out (None); TensorBoard in the run dir when that leaves
    none, so the run still has its curves locally."""
    kept = [lg for lg in loggers if lg is not None]
    if kept or len(kept) == len(loggers):
        return kept
    from ferlab.trackers.tensorboard_run import TensorBoardLogger

    return [TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)]
