"""What `init_from=` means for `ferlab train`: start from another run's network weights, nothing else.

| value | weights from |
|---|---|
| path/to/file.ckpt | that checkpoint |
| path/to/run_dir | `<run_dir>/checkpoints/best.ckpt`, else `last.ckpt` |
| last:<task_name> | the most recent finished run of that task under `${paths.log_dir}/<task_name>/` (`runs/*` and `multiruns/*/*`) with a checkpoint: finished = metrics.json written (the last thing a run does) and no failed.json; most recent = newest metrics.json |
| builtin:<name> | a checkpoint shipped with ferlab (`ferlab.weights`), e.g. builtin:fer2013_mini_xception |

The run's network is built from this run's own config as usual; then only the checkpoint's `net.*` tensors are
read (`torch.load(weights_only=True)`; no optimizer, epoch, scheduler or RNG state) and copied through
`ferlab.models.pretrained.load_weights`: a head of another class count (FER2013 7 -> FER+ 8) is re-initialised
and reported, weights of another network fail in one line. The checkpoint's stored config is never used.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from ferlab.errors import FerlabError
from ferlab.runs.runfiles import LAST
from ferlab.weights import is_builtin, resolve_checkpoint

log = logging.getLogger(__name__)

CHECKPOINTS = (LAST.with_name("best.ckpt"), LAST)  # the run's best, else its latest


def finished_runs(task_dir: Path) -> list[Path]:
    """Run directories of one task that ended (metrics.json, no failed.json), newest metrics.json first."""
    found = [p.parent for pattern in ("runs/*/metrics.json", "multiruns/*/*/metrics.json")
             for p in task_dir.glob(pattern)]
    found = [run for run in found if not (run / "failed.json").exists()]
    return sorted(found, key=lambda run: (run / "metrics.json").stat().st_mtime, reverse=True)


def run_checkpoint(run: Path) -> Path | None:
    """A run's best.ckpt, else its last.ckpt, else None."""
    return next((run / c for c in CHECKPOINTS if (run / c).is_file()), None)


def resolve_init_from(cfg: DictConfig) -> Path | None:
    """The checkpoint file `cfg.init_from` names, or None when it is unset."""
    value = cfg.get("init_from")
    if value is None or not str(value).strip():
        return None
    value = str(value).strip()
    if is_builtin(value):
        return resolve_checkpoint(value)
    if value.startswith("last:"):
        task = value.removeprefix("last:").strip()
        if not task:
            raise FerlabError("init_from=last:<task_name> needs a task name, e.g. init_from=last:report004_pretrain")
        task_dir = Path(cfg.paths.log_dir) / task
        for run in finished_runs(task_dir):
            if (ckpt := run_checkpoint(run)) is not None:
                log.info("init_from=%s: run %s", value, run)
                return ckpt.resolve()
        raise FerlabError(f"init_from={value}: no finished run with a checkpoint under {task_dir}")
    path = Path(value).expanduser()
    if path.is_dir():
        ckpt = run_checkpoint(path)
        if ckpt is None:
            raise FerlabError(f"init_from={value}: run directory has no {CHECKPOINTS[0]} or {CHECKPOINTS[1]}")
        return ckpt.resolve()
    if not path.is_file():
        raise FerlabError(f"init_from={value}: no such checkpoint file or run directory (or use last:<task_name> "
                          "or builtin:<name>)")
    return path.resolve()


def init_weights(net, path: Path):
    """Copy the network weights of the ferlab checkpoint `path` into `net` (a zoo net: a training method wraps it
    afterwards); returns the LoadReport. From a run whose method wrapped its net (SCN, DAN) only the zoo net's
    weights (`body.*`) are taken: the method's own modules are that run's, rebuilt by this run's method."""
    from ferlab.checkpoints.ckpt_file import load_checkpoint, net_weights
    from ferlab.models.pretrained import load_weights

    checkpoint = load_checkpoint(path)  # weights_only; a missing or truncated file is one line
    weights = net_weights(checkpoint)
    if not weights:
        raise FerlabError(f"init_from: {path} is not a ferlab checkpoint (no network weights in it)")
    if _wrapped(checkpoint):
        weights = {k.removeprefix("body."): v for k, v in weights.items() if k.startswith("body.")}
        log.info("init_from=%s: the backbone network of its training method (the method's modules are not loaded)",
                 path)
    return load_weights(net, weights, source=str(path))


def _wrapped(checkpoint: dict) -> bool:
    """Whether the checkpoint's network is a training method's wrapper (its stored train_method, looked up in the
    method registry: a name compared, nothing called)."""
    from ferlab.methods.registry import method_for_target

    config = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    target = (config.get("train_method") or {}).get("_target_") if isinstance(config, dict) else None
    try:
        return isinstance(target, str) and method_for_target(target).wraps
    except FerlabError:  # not a ferlab method: the weights are loaded as they are (and must fit)
        return False
