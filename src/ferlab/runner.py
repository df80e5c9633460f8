"""The bridge from `ferlab <task>` to Hydra: config location, resolvers, and the task wrapper.

Light on purpose: nothing here imports torch or lightning, so `--help`, `--cfg job` and config errors
answer instantly. Task functions import their heavy modules inside.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ferlab import labels
from ferlab.errors import FerlabError

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger("ferlab")


def _run_id() -> str:
    """A short random id, fixed for this process, so two runs started in the same second never collide."""
    return os.environ.setdefault("FERLAB_RUN_ID", secrets.token_hex(3))


def register_resolvers() -> None:
    """`${ferlab.labels:fer2013}`, `${ferlab.num_classes:fer2013}` and `${ferlab.run_id:}` for the configs."""
    OmegaConf.register_new_resolver("ferlab.labels", lambda name: ListConfig(labels.class_names(name)), replace=True)
    OmegaConf.register_new_resolver("ferlab.num_classes", lambda name: len(labels.class_names(name)), replace=True)
    OmegaConf.register_new_resolver("ferlab.run_id", _run_id, replace=True)


register_resolvers()


def output_dir() -> Path | None:
    """This job's run directory, when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0


class JobFailed(RuntimeError):
    """A sweep job's failure, re-raised as an ordinary exception so the sweep records it and goes on."""


def guarded(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task; on failure write failed.json, print user errors as one line, keep sweeps going."""
    try:
        return fn(cfg)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit too: one job must not take a sweep down
        if isinstance(e, SystemExit) and not e.code:
            raise
        from ferlab.runfiles import write_failed

        out = output_dir()
        if out is not None and _rank_zero():
            write_failed(out, e)
        message = f"{type(e).__name__}: {e}" if not isinstance(e, FerlabError) else str(e)
        if _in_multirun():
            log.error("job failed: %s", message)
            raise JobFailed(message) from e
        if isinstance(e, (FerlabError, SystemExit)):
            print(f"ferlab: error: {e}", file=sys.stderr)
            sys.exit(e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1)
        raise


def hydra_task(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Decorator turning `run_x(cfg)` into a Hydra entry point reading `conf/<config_name>.yaml`."""
    import hydra

    def decorate(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
        @functools.wraps(fn)
        def main(cfg: DictConfig) -> Any:
            return guarded(fn, cfg)

        return main

    return decorate
