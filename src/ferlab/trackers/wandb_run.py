"""`logger=wandb`: Lightning's WandbLogger, offline unless the user turns it on.

Offline (the default, `mode: offline` or WANDB_MODE), W&B writes the run into `<run>/wandb/offline-run-*/` and
nothing leaves the machine; `wandb sync <that folder>` uploads it later. The run is named as in TensorBoard, its
config is the resolved config (nested, as W&B shows it: `data.batch_size`), a sweep's jobs share the group named
after the sweep folder, and a resumed run continues the same W&B run id (offline: a second folder with that id,
which `wandb sync` appends to the run). The end of the run sets its exit code (0, 1 for a crash, 128 + the
signal for a stop: W&B shows the run as failed) and saves metrics.json and the eval report with it.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ferlab import trackers

KIND = "wandb"
MAX_TAG = 64  # characters of a W&B tag


class TrackedWandbLogger(WandbLogger):
    """Lightning's WandbLogger, started by ferlab: config and the stored id at the start, files and the exit code at
    the end (`close`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)  # Lightning always passes it; wandb 0.31 warns that it does nothing

    def describe(self) -> str:
        return f"W&B run {self._id} ({self._wandb_init.get('mode') or 'online'})"

    def begin(self, config: dict[str, Any], run_dir: Path) -> None:
        run = self.experiment  # wandb.init: a new run, or the stored one continued (resume="allow")
        run.config.update(config, allow_val_change=True)
        self._id = run.id
        trackers.store_run(run_dir, KIND, {"id": run.id, "project": run.project, "mode": self._wandb_init.get("mode")})

    def close(self, outcome: trackers.Outcome) -> None:
        """The run's files (a finished run) and the Optuna trial's state, then the exit code."""
        run = self.experiment
        try:
            if outcome.metrics is not None:  # files in the run's own folder go with it (`wandb sync` uploads them)
                for name, folder in trackers.ARTIFACTS.items():
                    if (outcome.run_dir / name).is_file():
                        target = Path(run.dir) / folder / Path(name).name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(outcome.run_dir / name, target)
            if outcome.trial_state:
                run.tags = (*run.tags, f"optuna.state={outcome.trial_state}")
        finally:
            run.finish(exit_code=outcome.exit_code)


def _tags(marks: dict[str, str], labels: Any) -> list[str]:
    """W&B tags (plain strings): the config's `tags`, then key=value for the version, commit and Optuna trial."""
    keep = ("ferlab.version", "ferlab.commit", "optuna.trial")
    tags = [str(t) for t in labels or ()] + [f"{k}={marks[k]}" for k in keep if k in marks]
    return [t[:MAX_TAG] for t in tags]


def wandb_logger(*, project: str, save_dir: str, name: str | None = None, group: str | None = None,
                 mode: str = "offline", tags: Any = (), ckpt_path: Any = None, **kwargs: Any) -> WandbLogger | None:
    """Lightning's WandbLogger with this run's W&B run started (continued when the run resumes: `ckpt_path` set
    and <run>/trackers.json has its id); None, with one warning at the end of the run, when W&B cannot start.

    kwargs: more arguments of `wandb.init` (entity, notes, job_type, ...).
    """
    trackers.require("wandb", "wandb", "logger=wandb")
    out = Path(save_dir)
    stored = trackers.stored_run(out, KIND) if ckpt_path else None
    run_id = stored.get("id") if stored and stored.get("project") == project else None
    sweep = trackers.sweep_dir()
    logger = TrackedWandbLogger(name=name or trackers.run_name(out), save_dir=str(out), project=project, id=run_id,
                                group=group or (sweep.name if sweep else None), mode=mode,
                                tags=_tags(trackers.run_tags(out), tags), **kwargs)
    session = trackers.current()
    if session is None or rank_zero_only.rank != 0:  # outside `ferlab train` Lightning starts the run when it logs
        return logger
    try:
        logger.begin(trackers.resolved(session.cfg), out)
    except Exception as e:  # online without a network or a key: the run goes on without W&B
        if logger._experiment is not None:  # started, then failed: do not leave it open for the next run
            with contextlib.suppress(Exception):
                logger._experiment.finish(exit_code=1)
        trackers.warn(f"W&B ({mode}) could not start a run ({trackers.one_line(e)}): this run was logged locally "
                      f"only ({out})")
        return None
    trackers.started(logger)
    return logger
