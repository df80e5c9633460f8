"""`logger=mlflow`: Lightning's MLFlowLogger with one experiment per task_name and one run per job.

The default store is a local SQLite file, `<log_dir>/mlflow.db`, with artifacts beside it in `mlartifacts/`:
MLflow 3 keeps its file store (`./mlruns`) in maintenance mode and refuses to open one unless
MLFLOW_ALLOW_FILE_STORE is set, while SQLite works offline, needs no server and is what `mlflow ui
--backend-store-uri` and `mlflow server` read. Any other tracking URI works the same (`http://host:5000`).

Parameters are the flattened resolved config (dotted keys, values as typed in an override). MLflow caps a value at
6000 characters: a longer one (a long list of paths) is cut there and ends with "..."; the whole config is the
artifact `hydra/config.yaml`. Parameters cannot change in MLflow, so a resumed run that changes one (a raised
`trainer.max_epochs`, `ckpt_path`) keeps the original and records the new value as the tag `resumed.<key>`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ferlab import trackers

KIND = "mlflow"
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # a down server: seconds
BATCH = 100  # parameters or tags per request (MLflow's limit)


@contextlib.contextmanager
def _env_kept(*keys: str) -> Iterator[None]:
    """os.environ's `keys` as they were before the block, whatever it set."""
    before = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _no_retries() -> Iterator[None]:
    """MLflow's HTTP client without its retries (minutes against a server that is down), for the first contact."""
    with _env_kept(*PROBE_ENV):
        os.environ.update(PROBE_ENV)
        yield


def local_store(uri: str) -> Path | None:
    """The file of a local SQLite store URI, None for a server."""
    return Path(uri[len("sqlite:///"):].split("?")[0]) if uri.startswith("sqlite:///") else None


def absolute_uri(uri: str) -> str:
    """A local SQLite URI with an absolute path (jobs may run in other folders), its folder created."""
    path = local_store(uri)
    if path is None or path.name == ":memory:":
        return uri
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, made (or restored from the trash) when needed. Two jobs starting together
    on a new store race to create the store's tables or the experiment: the loser looks again."""
    for attempt in range(4):
        try:
            found = client.get_experiment_by_name(name)
            if found is not None and found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            if found is not None:
                return found.experiment_id
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception as e:
            text = str(e).lower()
            if attempt == 3 or not any(m in text for m in ("already exists", "unique constraint", "locked")):
                raise
            time.sleep(0.3 * (attempt + 1))
    raise AssertionError("unreachable")


class TrackedMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, started by ferlab: params, tags and the stored id at the start; artifacts and the
    status at the end (`close`)."""

    def __init__(self, *, log_best: bool, run_dir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_best, self.run_dir = log_best, run_dir
        self.lost = False  # the tracker stopped answering during the run: the rest is logged locally only

    @property
    def experiment(self) -> Any:
        """Lightning's client, without the MLFLOW_TRACKING_URI that its mlflow.set_tracking_uri leaves in os.environ:
        the next run in this process (a sweep's next job, a notebook's next run) would read it as its own default
        `logger.mlflow.tracking_uri` and log into this run's store."""
        with _env_kept("MLFLOW_TRACKING_URI"):
            return super().experiment

    def describe(self) -> str:
        return f"MLflow at {self._tracking_uri}"

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        if self.lost:
            return
        try:
            super().log_metrics(metrics, step)
        except Exception as e:  # a server gone during the run (after MLflow's own retries) must not end it
            self.lost = True
            trackers.warn(f"MLflow at {self._tracking_uri} stopped answering at step {step} ({trackers.one_line(e)}):"
                          f" the rest of this run was logged locally only ({self.run_dir})")

    def finalize(self, status: str = "success") -> None:
        if not self.lost:  # Lightning's end of fit or test; a failure there is met again (and reported) at `close`
            with contextlib.suppress(Exception):
                super().finalize(status)

    def begin(self, params: dict[str, Any], tags: dict[str, str], continued: bool) -> None:
        """Start (or continue) the run; log the params it does not have yet and the tags; keep its id."""
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

        client, run_id = self.experiment, self.run_id
        texts = {k: _cut(trackers.param_text(v), MAX_PARAM_VAL_LENGTH) for k, v in params.items()}
        if continued:
            client.update_run(run_id, status="RUNNING")
            had = client.get_run(run_id).data.params
            tags = {**tags, **{f"resumed.{k}": v for k, v in texts.items() if k in had and had[k] != v}}
            texts = {k: v for k, v in texts.items() if k not in had}
        items = [Param(k, v) for k, v in texts.items()]
        for i in range(0, len(items), BATCH):
            client.log_batch(run_id, params=items[i:i + BATCH])
        marks = [RunTag(k, _cut(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for i in range(0, len(marks), BATCH):
            client.log_batch(run_id, tags=marks[i:i + BATCH])
        trackers.store_run(self.run_dir, KIND, {"tracking_uri": self._tracking_uri, "experiment_id":
                                                self.experiment_id, "run_id": run_id, "run_name": self._run_name})

    def close(self, outcome: trackers.Outcome) -> None:
        """The run's files as artifacts (a finished run), the Optuna trial's state, then the status."""
        if self.lost:
            return
        client, run_id = self.experiment, self.run_id
        try:
            if outcome.metrics is not None:
                for name, folder in trackers.ARTIFACTS.items():
                    if (outcome.run_dir / name).is_file():
                        client.log_artifact(run_id, str(outcome.run_dir / name), folder or None)
                best = (outcome.metrics.get("checkpoints") or {}).get("best")
                if self.log_best and best and Path(best).is_file():
                    client.log_artifact(run_id, best, "checkpoints")
            if outcome.trial_state:
                client.set_tag(run_id, "optuna.state", outcome.trial_state)
        finally:
            client.set_terminated(run_id, outcome.status)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _continued_run(client: Any, run_dir: Path, uri: str, ckpt_path: Any) -> str | None:
    """The stored run to continue: only when this run resumes (`ckpt_path` set) in a run dir that started one in
    the same store, and the tracker still has it."""
    stored = trackers.stored_run(run_dir, KIND) if ckpt_path else None
    if not stored or stored.get("tracking_uri") != uri or not stored.get("run_id"):
        return None
    try:
        run = client.get_run(stored["run_id"])
    except Exception:  # deleted from the tracker meanwhile: a new run
        trackers.log.info("MLflow run %s of %s is gone: a new run is started", stored["run_id"], run_dir)
        return None
    return run.info.run_id if run.info.lifecycle_stage != "deleted" else None


def mlflow_logger(*, tracking_uri: str, experiment_name: str, run_dir: str, run_name: str | None = None,
                  artifact_location: str | None = None, log_model: bool = False, ckpt_path: Any = None,
                  tags: Any = ()) -> MLFlowLogger | None:
    """Lightning's MLFlowLogger with this run's MLflow run started (continued when the run resumes); None, with
    one warning at the end of the run, when the tracking server cannot be reached (the run logs locally).

    artifact_location: where a new experiment keeps artifacts (None: `mlartifacts/` beside a local store, the
    server's own choice otherwise). log_model: also upload the best checkpoint at the end.
    """
    trackers.require("mlflow", "mlflow", "logger=mlflow")
    from mlflow.tracking import MlflowClient

    uri, out = absolute_uri(str(tracking_uri)), Path(run_dir)
    store = local_store(uri)
    if artifact_location is None and store is not None:
        artifact_location = (store.parent / "mlartifacts").as_uri()
    session = trackers.current()
    try:
        with _no_retries():  # the first contact answers in seconds, also when nothing listens
            client = MlflowClient(uri)
            _experiment(client, experiment_name, artifact_location)
            run_id = _continued_run(client, out, uri, ckpt_path)
            logger = TrackedMLFlowLogger(log_best=bool(log_model), run_dir=out, experiment_name=experiment_name,
                                         run_name=run_name or trackers.run_name(out), tracking_uri=uri,
                                         run_id=run_id, artifact_location=artifact_location)
            if session is None or rank_zero_only.rank != 0:  # outside `ferlab train` Lightning starts the run
                return logger  # when it logs; on other ranks it is an inert stand-in (Lightning logs from rank 0)
            logger.begin(trackers.flat_params(trackers.resolved(session.cfg)), _tags(out, tags),
                         continued=run_id is not None)
    except Exception as e:
        trackers.warn(f"MLflow at {uri} not reachable ({trackers.one_line(e)}): this run was logged locally only "
                      f"({out})")
        return None
    trackers.started(logger)
    return logger


def _tags(run_dir: Path, labels: Any) -> dict[str, str]:
    tags = trackers.run_tags(run_dir, labels)
    if "ferlab.commit" in tags:  # where MLflow's UI shows a run's source version
        tags["mlflow.source.git.commit"] = tags["ferlab.commit"].removesuffix("+modified")
    return tags
