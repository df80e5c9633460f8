"""Shared fixtures: the real config tree composed with Hydra's compose API, shrunk to run in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from ferlab.config.runner import compose_run

REPO = Path(__file__).resolve().parents[1]

# A tiny, quick run: 600 synthetic faces, a narrow ResNet, no progress bar.
FAST = [
    "data.source.num_images=600",
    "data.batch_size=64",
    "model.width=8",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
]


def compose_cfg(tmp_path: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml with `overrides`, all paths under tmp_path, as Hydra would for a run."""
    return compose_run(config_name, [f"paths.root_dir={tmp_path}", *overrides], tmp_path / "run")


# Two-step runs of a narrow resnet18_small, trained once per session for the modules that only read them.
_TINY = [
    "data.source.num_images=200", "data.batch_size=32", "model.width=8", "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
    "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
]
EVAL_RUN = [*_TINY, "data.source.test=both", "data.split=random"]  # tested on both FER2013 test halves
INFER_RUN = [*_TINY, "logger=none", "test=false"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """metrics.json of EVAL_RUN (eval, explain): selected on validation, reported on both test halves."""
    from ferlab.tasks.train import run_train

    return run_train(compose_cfg(tmp_path_factory.mktemp("train"), EVAL_RUN))


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """last.ckpt of INFER_RUN (gray 48x48, 7 classes), for the inference modules (predict, demo, export)."""
    from ferlab.tasks.train import run_train

    return Path(run_train(compose_cfg(tmp_path_factory.mktemp("train"), INFER_RUN))["checkpoints"]["last"])


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides, fast=True): a composed train config writing only under tmp_path."""

    def make(*overrides: str, fast: bool = True, config_name: str = "train") -> DictConfig:
        return compose_cfg(tmp_path, [*(FAST if fast else []), *overrides], config_name)

    yield make
    GlobalHydra.instance().clear()


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ferlab ...` in a subprocess, the way a user runs it."""
    full_env = {**os.environ, "FERLAB_ROOT": str(cwd), **(env or {})}
    full_env.pop("FERLAB_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "ferlab", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for the whole suite: tiny models run fastest on one, identical float reductions on
    both sides of every comparison (resume, DDP, determinism), and no OpenMP oversubscription on a shared
    2-core machine, where two threads can make a step 30 times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Hydra's in-process runs point logging handlers at the test's captured streams, closed after the test;
    later tests would then print 'Logging error' tracebacks. Put every logger's handlers back as they were."""
    import logging

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    saved = {lg: (list(lg.handlers), lg.level, lg.propagate) for lg in loggers}
    yield
    for lg, (handlers, level, propagate) in saved.items():
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
