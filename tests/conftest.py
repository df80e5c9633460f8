"""Shared fixtures: the real config tree composed with Hydra's compose API, shrunk to run in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from ferlab.runner import compose_run

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
