"""What `ckpt_path=` means for `ferlab train`.

| value | resumes from | writes into |
|---|---|---|
| null | nothing (a fresh run) | the new run dir |
| path/to/file.ckpt | that checkpoint | the new run dir (a branch; the old run is left untouched) |
| path/to/run_dir | `<run_dir>/checkpoints/last.ckpt` | `<run_dir>` (the same run continues) |
| last | last.ckpt of this task's most recently checkpointed run under `${paths.log_dir}/<task_name>/runs` | that run |
| auto | `<this run's dir>/checkpoints/last.ckpt` if it exists, else nothing | this run's dir |

`auto` is for schedulers that re-run the same command in the same directory (SLURM requeue with a fixed
`hydra.run.dir` or sweep dir): the first attempt starts fresh, later ones continue. A run that continues in place
keeps one metrics.json, one TensorBoard directory and one checkpoint folder; the new Hydra directory made for the
resuming command holds only its config and log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

from ferlab.errors import FerlabError

log = logging.getLogger(__name__)

LAST = Path("checkpoints") / "last.ckpt"


def latest_run(runs_dir: Path) -> Path | None:
    """The run under `runs_dir` whose last.ckpt was written most recently."""
    candidates = [p for p in runs_dir.glob(f"*/{LAST}") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime).parent.parent if candidates else None


def _run_to_continue(cfg: DictConfig, value: str) -> Path | None:
    """The run directory `value` asks to continue in place, or None for a plain checkpoint file."""
    if value == "auto":
        return Path(cfg.paths.output_dir)
    if value == "last":
        runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
        run = latest_run(runs)
        if run is None:
            raise FerlabError(f"ckpt_path=last: no run with {LAST} under {runs}")
        return run
    path = Path(value)
    if path.is_dir():
        if not (path / LAST).is_file():
            raise FerlabError(f"ckpt_path={value}: run directory has no {LAST}")
        return path
    if not path.is_file():
        raise FerlabError(f"ckpt_path={value}: no such checkpoint file or run directory")
    return None


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint file `cfg.ckpt_path` points at; when a run continues in place, set `paths.output_dir` to it."""
    value = cfg.get("ckpt_path")
    if value is None or str(value).strip() == "":
        return None
    run = _run_to_continue(cfg, str(value))
    if run is None:
        return str(value)
    ckpt = run / LAST
    if not ckpt.is_file():  # only `auto` gets here: the first attempt
        log.info("ckpt_path=auto: no %s yet, starting from scratch", ckpt)
        return None
    # the same string the original run used, so ModelCheckpoint recognizes its dirpath and keeps best-k state
    run_dir = os.path.abspath(run)
    if run_dir != os.path.abspath(cfg.paths.output_dir):
        log.info("continuing run %s (this command's own directory keeps only its config and log)", run_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = run_dir
    (Path(run_dir) / "failed.json").unlink(missing_ok=True)  # the run is live again
    log.info("resuming from %s", ckpt)
    return str(Path(run_dir) / LAST)
