"""Shared fixtures: the real config tree composed with Hydra's compose API, shrunk to run in seconds."""

from __future__ import annotations

import atexit
import itertools
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
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


def _cli_env(cwd: Path, env: dict | None) -> dict[str, str]:
    """A child's environment: this one less FERLAB_RUN_ID, FERLAB_ROOT=cwd, one torch thread (two children of a test,
    or two xdist workers, on a 2-core machine must not fight over OpenMP threads), then `env`."""
    full_env = {**os.environ, "FERLAB_ROOT": str(cwd), "OMP_NUM_THREADS": "1"}
    full_env.pop("FERLAB_RUN_ID", None)
    return {**full_env, **(env or {})}


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ferlab ...` in a new interpreter, the way a user runs it from a terminal (tests of the
    command's own contract: entry point, imports, output; for what a run does, `ferlab_cli` is 5-10x cheaper)."""
    return subprocess.run([sys.executable, "-m", "ferlab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_cli_env(cwd, env))


# What a process forked from the suite's forkserver (ferlab_cli here, tests/test_resume.py, tests/test_trackers.py)
# finds imported already: a new interpreter spends ~4 s of CPU on these (9 s on a busy machine), more than a smoke
# run's training. One list: the server is started once per test process (each xdist worker has its own), by
# whichever of them comes first.
FORKSERVER_PRELOAD = ["torch", "pytorch_lightning", "hydra", "optuna", "ferlab.cli", "ferlab.tasks.train", "ferlab.config.runner",
                      "ferlab.search.sweep", "ferlab.lit.classifier", "ferlab.checkpoints.resilience", "ferlab.data.datamodule",
                      "ferlab.models.resnet", "hydra_plugins.ferlab_sweepers._optuna", "mlflow", "wandb",
                      "tests.test_resume"]


def forkserver() -> mp.context.BaseContext:
    """multiprocessing's forkserver context, its server running with FORKSERVER_PRELOAD imported."""
    from multiprocessing import forkserver as server

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    server.ensure_running()
    return ctx


def _cli_child(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """`ferlab <argv>` in a process forked from the preloaded server, set up as a terminal starts a command: its
    own session (so killpg reaches what it starts), default SIGINT/SIGTERM, `env`, `cwd`, stdout/stderr to files.
    Exits as the interpreter would: SystemExit's code, 1 after an uncaught exception's traceback, and killed by
    SIGINT after an uncaught KeyboardInterrupt."""
    os.setsid()
    output_to(out, err)
    exit_as_ferlab(argv, cwd, env)


def output_to(out: str, err: str | None = None, append: bool = False) -> None:
    """In a forked child: stdout into the file `out`, stderr into `err` (default: the same file)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(out, flags, 0o644)
    os.dup2(fd, 1)
    os.dup2(os.open(err, flags, 0o644) if err else fd, 2)


def exit_as_ferlab(argv: list[str], cwd: str, env: dict[str, str]) -> None:
    """In a forked child: run `ferlab <argv>` in `cwd` with `env` and default SIGINT/SIGTERM, then exit as a new
    interpreter would (SystemExit's code, 1 after an uncaught exception's traceback, killed by SIGINT after an
    uncaught KeyboardInterrupt). Shared by `ferlab_cli` and the docs pages' `ferlab` server (tests/test_docs.py)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # what a new interpreter installs
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS") or 1))
    code, interrupted = 0, False
    try:
        from ferlab.cli import main

        main(list(argv))
    except SystemExit as stop:
        if isinstance(stop.code, int) or stop.code is None:
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:  # noqa: BLE001  (the interpreter's own last resort)
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


class ForkedCli:
    """A running forked `ferlab` process, with the parts of subprocess.Popen the tests use."""

    def __init__(self, proc: mp.Process, args: list[str], out: Path, err: Path) -> None:
        self.proc, self.args, self.out, self.err = proc, args, out, err
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.exitcode

    def poll(self) -> int | None:
        return self.proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (-N: killed by signal N); after `timeout` s the process group is killed and
        subprocess.TimeoutExpired raised."""
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.join()
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.proc.exitcode

    def result(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        code = self.wait(timeout)
        out, err = (p.read_text() if p.exists() else "" for p in (self.out, self.err))
        return subprocess.CompletedProcess(self.args, code, out, err)


@pytest.fixture(scope="session")
def ferlab_cli(tmp_path_factory) -> Callable[..., ForkedCli]:
    """start(*args, cwd=, env=None) -> ForkedCli: `ferlab <args>` as run_cli runs it (same environment, exit
    status, stdout and stderr), forked from a server that has torch, Lightning, Hydra and ferlab imported, so a
    small run costs ~1 s instead of ~5-10. `start(...).result(timeout)` is run_cli's CompletedProcess."""
    ctx = forkserver()
    logs, numbers = tmp_path_factory.mktemp("ferlab_cli"), itertools.count()

    def start(*args: str, cwd: Path, env: dict | None = None) -> ForkedCli:
        n = next(numbers)
        out, err = logs / f"{n}.out", logs / f"{n}.err"
        proc = ctx.Process(target=_cli_child, args=(list(args), str(cwd), _cli_env(cwd, env), str(out), str(err)))
        proc.start()
        return ForkedCli(proc, ["ferlab", *args], out, err)

    return start


# Modules whose tests train, spawn processes or build full-size networks (seconds each); `make test-fast`
# (`pytest -m "not slow"`) leaves them out, with every test using a fixture of SLOW_FIXTURES and the tests marked
# @pytest.mark.slow in the other modules.
SLOW_MODULES = {
    "test_align", "test_checkpoint_errors", "test_cli", "test_cross_dataset", "test_data_cache", "test_ddp",
    "test_demo", "test_detect", "test_determinism", "test_eval", "test_experiments", "test_explain", "test_export",
    "test_face_backbones", "test_finetune", "test_hostile_checkpoints", "test_init_from", "test_methods",
    "test_mini_xception", "test_nan_guard", "test_package", "test_predict", "test_pretrained", "test_restore",
    "test_resume", "test_resume_boundary", "test_search", "test_sweeps", "test_timm", "test_trackers", "test_train",
    "test_user_configs", "test_va_runs", "test_validate",
}
SLOW_FIXTURES = {"trained", "ckpt", "ferlab_cli"}


# Modules by the worker-seconds they take, heaviest first (serial `--durations=0`; the rest follow in collection
# order, those with slow tests first): the xdist workers take whole modules in this order, so each ends on short ones.
HEAVY_FIRST = ["test_sweeps", "test_search", "test_experiments", "test_resume_boundary", "test_resume", "test_models",
               "test_docs", "test_configs", "test_ddp", "test_trackers", "test_package", "test_cli"]


def _module(item: pytest.Item) -> str:
    return item.module.__name__.rpartition(".")[2]


def pytest_collection_modifyitems(config, items) -> None:
    """Mark `slow` what SLOW_MODULES and SLOW_FIXTURES name; order modules as HEAVY_FIRST says, then those with
    slow tests, each module's tests in their file's order."""
    for item in items:
        if _module(item) in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    place: dict[str, tuple] = {}  # module -> (rank in HEAVY_FIRST, has no slow test, first position)
    for i, item in enumerate(items):
        name = _module(item)
        key = (HEAVY_FIRST.index(name) if name in HEAVY_FIRST else len(HEAVY_FIRST),
               item.get_closest_marker("slow") is None, i)
        place[name] = min(place.get(name, key), key)
    items.sort(key=lambda item: place[_module(item)])


def pytest_xdist_make_scheduler(config, log):
    """`-n N`: each worker takes whole modules, in the order above (xdist's `loadfile`, without its reordering by
    test count). A module's fixtures (a tracking server, reference runs, trained checkpoints) are built once, and
    no worker sits idle at the end while the other works through a long queue (the default `load` hands out
    chunks of ~100 tests: 64 s of one idle core at the end of a 8-minute run)."""
    if config.getoption("dist") != "load":  # the user chose a scheduler
        return None
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False
    return LoadFileScheduling(config, log)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (make test): one worker per core, at most 4. Each worker holds torch, a forkserver and the session
    fixtures (~1.5 GB); beyond 4 the few long tests (a sweep, the experiments' smoke multirun) bound the wall time."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


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
