"""Files a run leaves behind (metrics.json, failed.json) and the summary printed at its end."""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

from ferlab.errors import Interrupted, Preempted
from ferlab.runs.io import atomic_write_text

LAST_NAME = "last.ckpt"  # written by ferlab.checkpoints.resilience.LastCheckpoint into the run's checkpoint dir
LAST = Path("checkpoints") / LAST_NAME  # relative to a run dir: what ckpt_path=<run dir>|last|auto resume from
NOT_STARTED = "NotStarted"  # failed.json type of a sweep job the sweeper never started
STOPPED = (Preempted.__name__, Interrupted.__name__, NOT_STARTED)  # failed.json types of runs that continue with ckpt_path=auto


def _plain(value: Any) -> Any:
    """JSON-safe: tensors and numpy scalars to floats, NaN/inf to strings."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> Path:
    """Write a dict as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(_plain(data), indent=2) + "\n")


def write_failed(run_dir: Path, error: BaseException) -> Path:
    """failed.json: the exception type, message and where it came from; for a run stopped by a signal
    (`Preempted`, `Interrupted`) also its exit code, with which a sweep it stopped ends."""
    tb = traceback.extract_tb(error.__traceback__)
    info = {"type": type(error).__name__, "message": str(error), "where": f"{tb[-1].filename}:{tb[-1].lineno}" if tb
            else None}
    if isinstance(error, Preempted):
        info["exit_code"] = error.code
    return write_json(run_dir / "failed.json", info)


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json."""
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def headline_metrics(metrics: dict) -> dict[str, Any]:
    """What a run is judged by: val/* of the best epoch (the checkpoint that was tested; the last epoch's where no
    best was recorded) and the test metrics, per-class F1 left out. Shared by the summary, HPARAMS and reports."""
    val = {}
    for source in (metrics.get("final") or {}, metrics.get("best_epoch_metrics") or {}):  # the best epoch wins
        val.update({k: v for k, v in source.items() if k.startswith("val/")})
    test = {k: v for k, v in (metrics.get("test") or {}).items() if "/f1/" not in k}
    return {k: d[k] for d in (val, test) for k in sorted(d)}


def print_summary(metrics: dict, run_dir: Path) -> None:
    """A short table of the best validation and the test metrics, the run dir and the TensorBoard command."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ferlab run ({metrics.get('epochs', '?')} epochs, {metrics.get('wall_time_s', 0):.0f} s)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    best = metrics.get("best", {})
    table.add_row(f"best {best.get('monitor', 'val')} (epoch {best.get('epoch')})", _fmt(best.get("score")))
    for name, value in headline_metrics(metrics).items():
        table.add_row(name, _fmt(value))
    console = Console(stderr=False)
    console.print(table)
    console.print(f"run dir: {run_dir}")
    console.print(f"tensorboard --logdir {run_dir / 'tensorboard'}")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)
