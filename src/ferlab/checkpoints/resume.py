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
from typing import Any

from omegaconf import DictConfig, open_dict

from ferlab.errors import FerlabError
from ferlab.runs.runfiles import LAST

log = logging.getLogger(__name__)


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
    """The checkpoint file `cfg.ckpt_path` points at; when a run continues in place, set `paths.output_dir` to it.

    The run dir is live from here on: a failed.json an earlier attempt left there (a crash, a signal, a sweep job
    that never started) is removed.
    """
    ckpt = _checkpoint_to_resume(cfg)
    (Path(cfg.paths.output_dir) / "failed.json").unlink(missing_ok=True)
    return ckpt


def _checkpoint_to_resume(cfg: DictConfig) -> str | None:
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
    log.info("resuming from %s", ckpt)
    return str(Path(run_dir) / LAST)


def _first_difference(saved: dict, own: dict) -> str | None:
    """The first weight the checkpoint lacks, has in excess, or holds in another shape; None when all fit."""
    for key, tensor in own.items():
        if key not in saved:
            return f"no weight {key}"
        if tuple(saved[key].shape) != tuple(tensor.shape):
            return f"{key} is {tuple(saved[key].shape)} there, {tuple(tensor.shape)} here"
    extra = next((k for k in saved if k not in own), None)
    return f"unexpected weight {extra}" if extra else None


def _model_defaults(stored: dict) -> dict | None:
    """The stored model family's conf/model/<name>.yaml as plain data (None when there is no such file)."""
    import yaml

    from ferlab.checkpoints.mismatch import model_name
    from ferlab.config.searchpath import conf_root

    path = conf_root() / "model" / f"{model_name(stored)}.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def check_fits(ckpt: str, model: Any, config: dict) -> None:
    """Before Lightning loads `ckpt` into `model` (a LightningModule): one line naming the checkpoint's model and
    data and this run's when its weights do not fit, or why its training state cannot be continued exactly
    (`check_resumable`). Tensors are memory-mapped, so the check reads little."""
    from ferlab.checkpoints.ckpt_file import load_checkpoint
    from ferlab.checkpoints.mismatch import describe_mismatch

    saved = load_checkpoint(ckpt, mmap=True)
    problem = _first_difference(saved.get("state_dict") or {}, model.state_dict())
    if problem is None:
        check_resumable(saved, ckpt, config)
        return
    stored = (saved.get("hyper_parameters") or {}).get("config")
    if not isinstance(stored, dict):
        raise FerlabError(f"checkpoint {ckpt} does not fit this run's network ({problem}) and holds no ferlab config")
    raise FerlabError(describe_mismatch(stored, config, ckpt, detail=problem, defaults=_model_defaults(stored)))


def check_resumable(saved: dict, ckpt: str, config: dict) -> None:
    """One line when `saved` (a loaded checkpoint) was written where Lightning cannot continue exactly: an earlier
    ferlab stopped in the middle of a validation or between micro-batches (`ferlab.checkpoints.fit_audit.unsafe_state`)."""
    from ferlab.checkpoints.fit_audit import unsafe_state

    stored = (saved.get("hyper_parameters") or {}).get("config")
    trainer_cfg = (stored if isinstance(stored, dict) else config).get("trainer") or {}
    fit_loop = (saved.get("loops") or {}).get("fit_loop")
    problem = unsafe_state(fit_loop, int(trainer_cfg.get("accumulate_grad_batches") or 1)) if fit_loop else None
    if problem:
        raise FerlabError(
            f"checkpoint {ckpt} cannot be resumed exactly: it was saved {problem} at epoch {saved.get('epoch')}, "
            f"step {saved.get('global_step')} (a stop signal handled by an earlier ferlab); Lightning would "
            "continue as if that work were done and end the run short; start the run again without ckpt_path=")
