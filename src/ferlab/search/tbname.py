"""The TensorBoard run name of a sweep job: the overrides that differ between the sweep's jobs.

`tensorboard --logdir <sweep dir>` names each run by its folder, relative to the logdir. A job's events go to
`<job>/tensorboard/<name>/`, e.g. `3/tensorboard/model.drop_rate=0.2,optim=sgd`, so the run list says which
job is which; the job dirs themselves (what the sweeper, `ferlab report`, `ckpt_path=auto` and a SLURM requeue
use) are unchanged. A single run keeps its events in `<run>/tensorboard/`.

The swept keys are read from the sweep's `multirun.yaml` (the command line, as Hydra's sweepers save it) and
the sweeper's `params`; without either, every override of the job names it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MAX_VALUE = 24  # characters of one value before its middle is cut
MAX_NAME = 120  # characters of the whole name (a folder name; file systems allow 255 bytes)
UNSAFE = re.compile(r"[/\\\x00-\x1f]")  # not in a folder name


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def swept_keys(sweep_dir: Path, params: Any) -> set[str]:
    """Keys swept on the command line (multirun.yaml) or by the sweeper's `params`."""
    keys = set(params or {})
    saved = sweep_dir / "multirun.yaml"
    if saved.is_file():
        from omegaconf import OmegaConf

        task = OmegaConf.select(OmegaConf.load(saved), "hydra.overrides.task", default=None)
        task = OmegaConf.to_container(task, resolve=False) if task is not None else []  # data: parsed, not resolved
        keys |= {o.key_or_group for o in _parse([str(t) for t in task]) if o.is_sweep_override()}
    return keys


def short(value: str) -> str:
    """A value as a name part: a path's last part, a long float to 4 significant digits, a long text cut."""
    text = value.strip().strip("'\"")
    if "/" in text.rstrip("/"):
        text = text.rstrip("/").rsplit("/", 1)[-1]
    if len(text) > 8 and re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", text):
        text = f"{float(text):.4g}"
    if len(text) > MAX_VALUE:
        half = MAX_VALUE // 2 - 1
        text = f"{text[:half]}..{text[-half:]}"
    return text


def run_name(task_overrides: list[str], swept: set[str]) -> str:
    """"k=v,k=v" of the job's overrides whose keys are swept (all of them when none is known), sorted by key,
    folder-safe."""
    pairs = sorted((o.key_or_group, short(o.get_value_element_as_str())) for o in _parse(task_overrides))
    name = ",".join(f"{k}={v}" for k, v in pairs if not swept or k in swept)
    name = UNSAFE.sub("_", name)
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 2] + ".."


def sweep_run_name() -> str:
    """This job's TensorBoard run name in a multirun; "" (no sub folder) in a single run or outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    hydra = HydraConfig.get()
    swept = swept_keys(Path(hydra.sweep.dir), hydra.sweeper.get("params"))
    return run_name(list(hydra.overrides.task), swept)
