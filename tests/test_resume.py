"""Exact resume: RNG state in checkpoints, last.ckpt every epoch, ckpt_path=<run dir>|last|auto, SIGKILL at
random points, SIGTERM/SIGUSR1/SIGINT (Ctrl-C) at a random batch saving a checkpoint that resumes bit-exactly
mid-epoch, a second Ctrl-C while saving, and a kill in the middle of a save.

Runs killed with real signals are real processes running `ferlab train`; they are forked from a server that
has torch and Lightning imported already (multiprocessing's forkserver), so each costs ~1 s instead of ~9.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import Callback

from ferlab.checkpoints.checkpoint_io import AtomicCheckpointIO
from ferlab.checkpoints.ckpt_file import load_checkpoint
from ferlab.checkpoints.preemption import TWICE
from ferlab.checkpoints.resilience import rng_state, set_rng_state
from ferlab.checkpoints.resume import resolve_ckpt_path
from ferlab.errors import FerlabError, Interrupted, Preempted
from ferlab.tasks.train import run_train
from tests.conftest import FAST, compose_cfg, forkserver, output_to

LAST = Path("checkpoints") / "last.ckpt"


# ---- helpers: callbacks injected with +callbacks.<name>._target_=..., and forked `ferlab` processes -------------

class FailAtEpochStart(Callback):
    """Simulates a crash at an epoch boundary (after the previous epoch's last.ckpt was written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at the start of epoch {self.epoch}")


class SignalAtStep(Callback):
    """Sends `signum` to its own process after global step `step` (a real signal, delivered asynchronously)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class SlowSteps(Callback):
    """Sleeps after every training step, so a signal sent from outside lands in the middle of training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


class KillDuringEpoch(Callback):
    """SIGKILLs its own process `fraction` of an epoch's time into epoch `epoch` (a step, validation or a save),
    the epoch's time being the one before it in this process; it starts no later epoch, so a kill that comes late
    lands on the boundary, never a further epoch on: each attempt ends one or two epochs on, however busy the CPU."""

    def __init__(self, epoch: int, fraction: float) -> None:
        self.epoch, self.fraction, self.started = epoch, fraction, None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        now, epoch = time.monotonic(), trainer.current_epoch
        if epoch > self.epoch:
            self._wait_for_the_kill()
        if epoch == self.epoch:
            delay = self.fraction * (now - self.started) if self.started else 0.0
            kill = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL))
            kill.daemon = True  # a run that ended first exits 0, and the test says so
            kill.start()
        self.started = now

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= self.epoch:
            self._wait_for_the_kill()

    @staticmethod
    def _wait_for_the_kill() -> None:
        while True:
            time.sleep(1)


def _ferlab_child(argv: list[str], root: str, log: str) -> None:
    torch.set_num_threads(1)
    # the dispositions a terminal's Python process starts with, whatever pytest inherited (nohup ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    output_to(log, append=True)
    os.environ["FERLAB_ROOT"] = root
    os.environ.pop("FERLAB_RUN_ID", None)
    from ferlab.cli import main

    main(list(argv))


@pytest.fixture(scope="module")
def ferlab_proc() -> Callable[..., mp.Process]:
    """start(*argv, root=, log=) -> a started process running `ferlab <argv>`."""
    ctx = forkserver()

    def start(*argv: str, root: Path, log: Path) -> mp.Process:
        proc = ctx.Process(target=_ferlab_child, args=(list(argv), str(root), str(log)))
        proc.start()
        return proc

    return start


def _wait(condition: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _ckpt_epoch(path: Path) -> int:
    """Epoch stored in a checkpoint, -1 when there is none; a file that exists must always load."""
    return load_checkpoint(path)["epoch"] if path.exists() else -1


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# FAST on 200 faces in batches of 32: 160 to train, 5 steps an epoch (half of FAST's cost per epoch)
SMALL = [*FAST, "data.source.num_images=200", "data.batch_size=32"]
PER_EPOCH = 5
# 3 epochs of 5 steps; dropout and the report's augmentation draw from the RNG at every step; best.ckpt is pinned
# to epoch 0 (monitor epoch, mode min), so last.ckpt alone must follow every epoch
EXACT = ["trainer.max_epochs=3", "test=false", "seed=7", "augment=report001", "model.drop_rate=0.2",
         "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
STEPS = 3 * PER_EPOCH


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """metrics.json of an EXACT run never stopped, and its run dir under "dir"."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    return {**run_train(compose_cfg(run.parent, [*SMALL, *EXACT, f"paths.output_dir={run}"])), "dir": run}


def _resume_matches(uninterrupted: dict, run: Path, make_cfg, tmp_path: Path) -> None:
    """Resume `run` (stopped mid-way) in this process: its history and weights equal the uninterrupted run's."""
    resumed = run_train(make_cfg(*SMALL, *EXACT, f"ckpt_path={run}", f"paths.output_dir={tmp_path / 'resumer'}",
                                 fast=False))
    assert resumed["global_step"] == STEPS and resumed["history"] == uninterrupted["history"]
    assert _same_weights(run / LAST, uninterrupted["dir"] / LAST)


# ---- in-process ---------------------------------------------------------------------------------------------------

def test_rng_state_survives_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()  # move every stream on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_crash_at_epoch_boundary_then_resume_run_dir_is_bit_identical(uninterrupted, make_cfg, tmp_path):
    crashed = tmp_path / "crashed"
    crash = ["+callbacks.crash._target_=tests.test_resume.FailAtEpochStart", "+callbacks.crash.epoch=2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(make_cfg(*SMALL, *EXACT, *crash, f"paths.output_dir={crashed}", fast=False))
    assert _ckpt_epoch(crashed / LAST) == 1 and load_checkpoint(crashed / "checkpoints/best.ckpt")["epoch"] == 0

    events_before = len(list((crashed / "tensorboard").glob("events.out.tfevents.*")))
    resumed = run_train(make_cfg(*SMALL, *EXACT, f"ckpt_path={crashed}", f"paths.output_dir={tmp_path / 'resumer'}",
                                 fast=False))
    ref = uninterrupted
    assert _same_weights(ref["dir"] / LAST, crashed / LAST)
    assert resumed["history"] == ref["history"]  # every logged number of every epoch, not just the last weights
    assert resumed["global_step"] == ref["global_step"] and resumed["epochs"] == 3
    # the run continued in place: one metrics.json, one checkpoint folder, one TensorBoard dir
    assert json.loads((crashed / "metrics.json").read_text())["history"] == ref["history"]
    assert not (tmp_path / "resumer" / "metrics.json").exists()
    assert len(list((crashed / "tensorboard").glob("events.out.tfevents.*"))) > events_before
    assert not (tmp_path / "resumer").exists()
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_ckpt_path_values_resolve_as_documented(make_cfg, tmp_path):
    runs = tmp_path / "outputs" / "train" / "runs"
    for name in ("older", "newer"):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / LAST).write_bytes(b"x")
        time.sleep(0.02)  # distinct mtimes
    cfg = make_cfg("ckpt_path=last")
    assert resolve_ckpt_path(cfg) == str(runs / "newer" / LAST)
    assert cfg.paths.output_dir == str(runs / "newer")

    cfg = make_cfg("ckpt_path=auto")
    assert resolve_ckpt_path(cfg) is None and cfg.paths.output_dir == str(tmp_path / "run")  # first attempt
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / LAST).write_bytes(b"x")
    (tmp_path / "run" / "failed.json").write_text("{}")
    assert resolve_ckpt_path(make_cfg("ckpt_path=auto")) == str(tmp_path / "run" / LAST)
    assert not (tmp_path / "run" / "failed.json").exists()  # the run is live again

    explicit = make_cfg(f"ckpt_path={runs / 'older' / LAST}")
    assert resolve_ckpt_path(explicit) == str(runs / "older" / LAST)
    assert explicit.paths.output_dir == str(tmp_path / "run")  # a checkpoint file branches into the new run dir

    for value, message in [(tmp_path / "nope.ckpt", "no such checkpoint"), (tmp_path / "outputs", "has no")]:
        with pytest.raises(FerlabError, match=message):
            resolve_ckpt_path(make_cfg(f"ckpt_path={value}"))


def test_sigusr1_saves_mid_epoch_checkpoint_and_raises_preempted(make_cfg, tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    cfg = make_cfg(*SMALL, "trainer.max_epochs=3", "test=false", "+callbacks.sig._target_=tests.test_resume.SignalAtStep",
                   "+callbacks.sig.step=7", f"+callbacks.sig.signum={int(signal.SIGUSR1)}", fast=False)
    with pytest.raises(Preempted, match="stopped by SIGUSR1 at epoch 1, step 7") as info:
        run_train(cfg)
    assert info.value.code == 128 + signal.SIGUSR1
    saved = load_checkpoint(Path(cfg.paths.output_dir) / LAST)
    assert saved["global_step"] == 7 and saved["epoch"] == 1  # the batch in flight finished, then the save
    assert signal.getsignal(signal.SIGUSR1) == before  # handlers restored after the run



def test_drawn_ferplus_targets_with_a_loader_worker_resume_exactly_mid_epoch(make_cfg, tmp_path):
    """FER+ `label_mode=probability` draws a class from each image's votes every time it is drawn; with a loader
    worker the draw still happens in the training process, so a mid-epoch stop resumes to the same run."""
    from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv
    from ferlab.data.writers import ferplus_votes, write_ferplus_csv

    images, labels, usage = make_dataset(SynthSpec(num_images=200, seed=6), cover_classes=True)
    votes, names = ferplus_votes(labels, seed=6, not_face=0.03)
    common = ["data=ferplus", f"data.source.csv_path={write_fer2013_csv(tmp_path / 'fer2013.csv', images, labels, usage)}",
              f"data.source.ferplus_path={write_ferplus_csv(tmp_path / 'fer2013new.csv', votes, usage, names)}",
              "data.source.label_mode=probability", "data.num_workers=1", "data.batch_size=32", "model.width=8",
              "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0", "callbacks.rich_progress_bar=null",
              "callbacks.rich_model_summary=null", "test=false", "seed=7"]
    ref = run_train(make_cfg(*common, f"paths.output_dir={tmp_path / 'ref'}", fast=False))
    step = ref["global_step"] // 2 + 2  # inside the second epoch
    run = tmp_path / "run"
    with pytest.raises(Preempted, match=f"step {step}"):
        run_train(make_cfg(*common, f"paths.output_dir={run}", "+callbacks.sig._target_=tests.test_resume.SignalAtStep",
                           f"+callbacks.sig.step={step}", f"+callbacks.sig.signum={int(signal.SIGUSR1)}", fast=False))
    resumed = run_train(make_cfg(*common, f"ckpt_path={run}", f"paths.output_dir={tmp_path / 'resumer'}", fast=False))
    assert resumed["history"] == ref["history"] and _same_weights(run / LAST, tmp_path / "ref" / LAST)

# ---- real processes -----------------------------------------------------------------------------------------------

def test_sigterm_at_a_random_batch_exits_143_and_resumes_exactly(ferlab_proc, uninterrupted, make_cfg, tmp_path):
    step = random.Random(143).randrange(1, STEPS)  # a batch inside an epoch or its last one: both must be exact
    run, log = tmp_path / "run", tmp_path / "log.txt"
    sig = ["+callbacks.sig._target_=tests.test_resume.SignalAtStep", f"+callbacks.sig.step={step}",
           f"+callbacks.sig.signum={int(signal.SIGTERM)}"]
    proc = ferlab_proc("train", *SMALL, *EXACT, *sig, f"hydra.run.dir={run}", root=tmp_path, log=log)
    proc.join(180)
    assert proc.exitcode == 143, log.read_text()[-2000:]
    errors = [line for line in log.read_text().splitlines() if line.startswith("ferlab: error:")]
    assert len(errors) == 1 and f"stopped by SIGTERM at epoch {step // PER_EPOCH}, step {step}" in errors[0]
    assert f"resume with ckpt_path={run}" in errors[0] and "Traceback" not in log.read_text()
    assert load_checkpoint(run / LAST)["global_step"] == step
    assert json.loads((run / "failed.json").read_text())["type"] == "Preempted"

    _resume_matches(uninterrupted, run, make_cfg, tmp_path)
    assert not (run / "failed.json").exists()


def test_ctrl_c_at_a_random_moment_exits_130_with_one_line_and_resumes_exactly(ferlab_proc, uninterrupted, make_cfg,
                                                                               tmp_path):
    run, log = tmp_path / "run", tmp_path / "log.txt"
    slow = ["+callbacks.slow._target_=tests.test_resume.SlowSteps", "+callbacks.slow.seconds=0.1"]  # 0.5 s per epoch
    proc = ferlab_proc("train", *SMALL, *EXACT, *slow, f"hydra.run.dir={run}", root=tmp_path, log=log)
    _wait(lambda: not proc.is_alive() or _ckpt_epoch(run / LAST) >= 0)  # epoch 0 done
    time.sleep(random.Random(130).uniform(0, 0.9))  # then anywhere in epoch 1 or 2: a step, validation, a save
    assert proc.is_alive(), "the run finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    proc.join(180)
    text = log.read_text()
    assert proc.exitcode == 130, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("ferlab: error:")]
    assert len(errors) == 1 and errors[0].startswith("ferlab: error: interrupted at epoch ")
    assert errors[0].endswith(f"resume with ckpt_path={run}") and "Traceback" not in text
    assert "KeyboardInterrupt" not in text
    failed = json.loads((run / "failed.json").read_text())
    assert failed["type"] == "Interrupted" and failed["exit_code"] == 130
    _resume_matches(uninterrupted, run, make_cfg, tmp_path)


@pytest.fixture
def sigint_raises():
    """Ctrl-C as a terminal's Python process gets it, whatever this test process inherited (nohup: ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_second_ctrl_c_while_saving_stops_at_once_and_keeps_the_last_good_checkpoint(make_cfg, monkeypatch,
                                                                                    sigint_raises):
    save = torch.save

    def interrupted_save(obj, f) -> None:  # the save the first Ctrl-C asked for, interrupted half-way by a second
        if isinstance(obj, dict) and obj.get("global_step") == 7:
            Path(f).write_bytes(b"PK" + bytes(100_000))
            os.kill(os.getpid(), signal.SIGINT)
        save(obj, f)

    monkeypatch.setattr(torch, "save", interrupted_save)
    cfg = make_cfg(*SMALL, "trainer.max_epochs=3", "test=false", "+callbacks.sig._target_=tests.test_resume.SignalAtStep",
                   "+callbacks.sig.step=7", f"+callbacks.sig.signum={int(signal.SIGINT)}", fast=False)
    with pytest.raises(Interrupted) as info:
        run_train(cfg)
    assert str(info.value) == TWICE and info.value.code == 130
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == PER_EPOCH  # epoch 0's, intact
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file left
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigkill_at_five_random_points_then_resume_matches_uninterrupted(ferlab_proc, make_cfg, tmp_path):
    common = [*SMALL, "trainer.limit_train_batches=2", "trainer.max_epochs=10", "test=false", "seed=5"]  # short epochs
    ref = run_train(make_cfg(*common, f"paths.output_dir={tmp_path / 'ref'}", fast=False))
    run, log, rng = tmp_path / "killed", tmp_path / "log.txt", random.Random(2024)
    argv = ["train", *common, f"hydra.run.dir={run}", "ckpt_path=auto"]
    kills = []
    for _ in range(5):
        before = _ckpt_epoch(run / LAST)
        # after this attempt's first epoch, anywhere in the next one: a step, validation or a save
        kill = ["+callbacks.kill._target_=tests.test_resume.KillDuringEpoch", f"+callbacks.kill.epoch={before + 2}",
                f"+callbacks.kill.fraction={rng.uniform(0, 0.9):.3f}"]
        proc = ferlab_proc(*argv, *kill, root=tmp_path, log=log)
        proc.join(180)
        assert proc.exitcode == -signal.SIGKILL, log.read_text()[-2000:]
        kills.append(_ckpt_epoch(run / LAST))  # loads: a kill never leaves a corrupt last.ckpt
        assert kills[-1] > before  # this attempt progressed
    assert kills == sorted(kills) and len(kills) == 5 and kills[-1] < 9

    proc = ferlab_proc(*argv, root=tmp_path, log=log)
    proc.join(180)
    assert proc.exitcode == 0, log.read_text()[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 10 and metrics["global_step"] == ref["global_step"]
    assert metrics["history"] == ref["history"]
    # every resume started at an epoch boundary (SIGKILL leaves the last epoch-end last.ckpt): bit-identical
    assert _same_weights(run / LAST, tmp_path / "ref" / LAST)


def _save_then_die(path: str) -> None:
    """Start overwriting `path` with a large checkpoint and SIGKILL this process half-way through the write."""

    def torn_save(obj, f) -> None:
        with open(f, "wb") as out:
            out.write(b"PK" + b"\0" * 1_000_000)  # a partial file, as a kill during torch.save leaves it
            out.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = torn_save
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(10)}}, path)


def test_kill_during_checkpoint_write_leaves_previous_last_ckpt_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(10)}, "epoch": 4}, path)
    proc = mp.get_context("fork").Process(target=_save_then_die, args=(str(path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    restored = load_checkpoint(path)
    assert restored["epoch"] == 4 and torch.equal(restored["state_dict"]["w"], torch.ones(10))


def test_every_stop_line_uses_one_resume_wording(tmp_path, monkeypatch):
    """The Ctrl-C line outside the loop, the in-loop signal line and the DDP workers' line share one wording."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from ferlab.checkpoints import ddp
    from ferlab.checkpoints.preemption import stop_message
    from ferlab.config.runner import _as_reported

    run, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer = SimpleNamespace(current_epoch=1, global_step=5, default_root_dir=str(run), callbacks=[])
    exited = SimpleNamespace(error_index=1, exit_code=-15)
    monkeypatch.setattr(ddp, "last_checkpoint", lambda _: last)
    cfg = OmegaConf.create({"paths": {"output_dir": str(run)}})

    def lines() -> list[str]:
        return [str(_as_reported(KeyboardInterrupt(), cfg)), stop_message(signal.SIGTERM, trainer, last),
                ddp._stopped_message(trainer, signal.SIGTERM, exited)]

    assert all(line.endswith("; no checkpoint saved yet, nothing to resume") for line in lines())
    last.parent.mkdir(parents=True)
    last.write_bytes(b"not a checkpoint")  # _saved_at then says nothing of the position
    outside, in_loop, workers = lines()
    assert outside == f"interrupted; resume with ckpt_path={run}"
    assert in_loop.endswith(f"; checkpoint saved to {last}; resume with ckpt_path={run}")
    assert workers == f"stopped by SIGTERM (rank 1 exited with -15); checkpoint saved to {last}; resume with ckpt_path={run}"
