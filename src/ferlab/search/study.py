"""Optuna studies shared by search workers, their trial jobs and `ferlab report --study`.

A storage is a URL: `sqlite:///path/study.db` (one machine), any SQLAlchemy URL such as
`postgresql+psycopg://user:password@host/db` (many machines), or `journal:///path/study.log`, Optuna's journal
file on a shared filesystem without a database server. Like SQLite's, the journal path is what follows
`journal:///`: relative to the working directory, or absolute with a fourth slash (`journal:////shared/x.log`).
Trials carry heartbeats on every storage (Optuna has them for databases; the journal gets them here), so a
trial whose worker died is failed once its grace period is over and retried with the same parameters.

Imported only by the Optuna search, its trial jobs and the study report, so optuna stays out of other commands.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ferlab.errors import FerlabError
from ferlab.lit.user_errors import error_line

JOURNAL = "journal:///"
PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
OLD_SCHEMA = "no longer compatible with the table schema"  # RDBStorage's message for a study of Optuna < 3


class JournalHeartbeatStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats: a trial's last beat is a system attribute (this machine's clock).

    A running trial is stale when neither its last beat nor its start is within `grace_period` seconds.
    """

    BEAT = "ferlab:heartbeat"

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int | None, grace_period: int | None,
                 stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        super().__init__(backend)
        self.heartbeat_interval, self.grace_period, self.stale_callback = heartbeat_interval, grace_period, stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, self.BEAT, time.time())

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        self.own_trials = {*getattr(self, "own_trials", ()), trial_id}
        return trial_id

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        now = time.time()
        stale = []
        own = getattr(self, "own_trials", set())  # asked here, maybe not started yet: this worker's to run or fail
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # a retry inherits its original's system attributes, old beat included: its start counts too
            started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            if trial._trial_id in own and trial.system_attrs.get(self.BEAT, 0.0) <= started:
                continue
            if now - max(trial.system_attrs.get(self.BEAT, 0.0), started) > grace:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_callback


class HeartbeatRDBStorage(RDBStorage):
    """Optuna's database storage, whose stale trials also include running ones that never had a heartbeat once
    their start is older than the grace period: trials of an Optuna-2 worker (hydra-optuna-sweeper keeps no
    heartbeats) or of a worker killed before its first beat, which Optuna would leave RUNNING for ever."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)  # what create_new_trial and Optuna's cache call
        self.own_trials = {*getattr(self, "own_trials", ()), trial._trial_id}
        return trial

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        grace = timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 0))
        running = {t._trial_id: t.datetime_start for t in self.get_all_trials(study_id, False, (TrialState.RUNNING,))}
        with _create_scoped_session(self.scoped_session) as session:
            beating = {i for (i,) in session.query(models.TrialHeartbeatModel.trial_id)
                       .filter(models.TrialHeartbeatModel.trial_id.in_(running))}
        own = getattr(self, "own_trials", set())  # asked by this worker, perhaps waiting for their turn in a batch
        silent = [i for i, start in running.items() if i not in beating and i not in stale and i not in own
                  and start is not None and datetime.now(start.tzinfo) - start > grace]
        return stale + silent


def state_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Trials by state name ("complete", "pruned", ...), in the order the states first appear."""
    return dict(Counter(t.state.name.lower() for t in trials))


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (journal:///...), or a malformed one: nothing to hide
        return url



def _local_file(url: str) -> Path | None:
    """The file of a journal or SQLite URL, None for a database server or SQLite in memory."""
    for prefix in (JOURNAL, "sqlite:///"):
        if url.startswith(prefix):
            path = url[len(prefix):].split("?")[0] if prefix != JOURNAL else url[len(prefix):]
            return Path(path) if path and path != ":memory:" else None
    return None


def absolute_url(url: str) -> str:
    """A journal or SQLite URL with its file made absolute (jobs on other nodes may run in other directories)."""
    path = _local_file(url)
    if path is None or path.is_absolute():
        return url
    prefix = JOURNAL if url.startswith(JOURNAL) else "sqlite:///"
    raw = url[len(prefix):] if prefix == JOURNAL else url[len(prefix):].split("?")[0]
    return prefix + str(path.resolve()) + url[len(prefix) + len(raw):]


def _rdb_storage(url: str, heartbeat_interval: int | None, grace_period: int | None, retry: Any) -> HeartbeatRDBStorage:
    """Optuna's database storage. Workers starting together on a new database race to create its tables; the
    losers see "already exists", a duplicate key or a unique constraint fail, and simply open it again."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for other workers' writes, do not fail
    for attempt in range(5):
        try:
            return HeartbeatRDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                       grace_period=grace_period, heartbeat_stale_trial_callback=retry)
        except Exception as e:
            if attempt == 4 or not any(m in str(e).lower() for m in ("already exists", "duplicate", "unique constraint")):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = None, create: bool = True) -> optuna.storages.BaseStorage:
    """The storage at `url`; with a heartbeat interval, stale trials are failed and retried `max_retry` times.
    Without `create`, a journal or SQLite file must exist (readers never leave an empty one behind).

    Raises FerlabError (one line) for a malformed or unreachable URL, a missing driver, or a study database
    written by Optuna < 3 (with the command that upgrades it in place, keeping every trial).
    """
    path = _local_file(url)
    if path is not None and not create and not path.is_file():
        raise FerlabError(f"no study storage at {path} ({url})")
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # SQLite and the journal create the file, not its folder
        except OSError as e:
            raise FerlabError(f"cannot open the study storage {url}: {e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental" since Optuna 2.9
            retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval else None
            if url.startswith(JOURNAL):
                backend = JournalFileBackend(url[len(JOURNAL):])
                return JournalHeartbeatStorage(backend, heartbeat_interval, grace_period, retry)
            return _rdb_storage(url, heartbeat_interval, grace_period, retry)
    except Exception as e:  # SQLAlchemy's, the driver's and the OS's errors all mean: this storage cannot be used
        if OLD_SCHEMA in str(e):
            raise FerlabError(
                f"the study storage {safe_url(url)} was written by Optuna 2 (an earlier ferlab); upgrade it once, "
                f"keeping every trial, with: optuna storage upgrade --storage '{url}'") from None
        raise FerlabError(f"cannot open the study storage {safe_url(url)}: {type(e).__name__}: {error_line(e)} "
                          "(sqlite:///file.db, journal:///file.log or a database URL such as "
                          "postgresql+psycopg://user:password@host/db)") from None


def make_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """A pruner from `hydra.sweeper.pruner`: a name (none, median, successive_halving, hyperband), null, a pruner
    object, or a config with `_target_` (e.g. optuna.pruners.MedianPruner with n_warmup_steps)."""
    if isinstance(spec, optuna.pruners.BasePruner):
        return spec
    if isinstance(spec, Mapping):
        from hydra.utils import instantiate

        return instantiate(spec)
    name = "none" if spec is None else str(spec).strip().lower().replace("-", "_").replace(" ", "_")
    if name not in PRUNERS:
        raise FerlabError(f"hydra.sweeper.pruner={spec!r}: unknown pruner; choose from {', '.join(PRUNERS)}")
    return PRUNERS[name]()


def load_study(url: str, study_name: str, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """An existing study (for trial jobs and reports); FerlabError naming the studies there if it is not."""
    storage = open_storage(url, create=False)
    try:
        return optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise FerlabError(f"no study {study_name!r} in {safe_url(url)}; studies there: "
                          f"{', '.join(names) or 'none'}") from None
