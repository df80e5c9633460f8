"""Stopping on a signal: SIGTERM and SIGUSR1 (cluster pre-emption) and SIGINT (Ctrl-C) finish the batch in flight,
save last.ckpt and end the run with exit status 128 + the signal number and one line saying how to resume.

Lightning 2.6 turns SIGTERM into a flag that its loops check after every batch; they then raise
`SIGTERMException`, a `SystemExit` whose code is None, so the process would end with status 0 as if the run had
finished (and it does nothing for SIGUSR1 outside SLURM). Ctrl-C becomes a KeyboardInterrupt wherever it lands,
which Lightning answers with "Detected KeyboardInterrupt" and exit status 1, saving nothing. Here all three signals
raise that flag at a batch boundary agreed by all ranks, the exception saves a checkpoint (`on_exception`), and
`stoppable` turns it into `Preempted` (143 for SIGTERM, 138 for SIGUSR1) or `Interrupted` (130). A signal during
validation is acted on at the next training batch or the epoch's end. A second Ctrl-C stops at once: whatever is
being written is abandoned (checkpoints are written to a temporary file and renamed, so nothing is corrupted).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ferlab.errors import Interrupted, Preempted
from ferlab.lit.resilience import LastCheckpoint, last_checkpoint

__all__ = ["SIGNALS", "Interrupted", "Preempted", "Preemption", "preempted", "stoppable"]

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # pre-emption: a DDP main process forwards these to its workers
STOP_SIGNALS = (*SIGNALS, signal.SIGINT)
TWICE = "interrupted twice: stopped at once without saving (checkpoints written before are intact)"


def _catches_sigint() -> bool:
    """False where SIGINT is ignored (nohup, background jobs, DDP workers whose main process handles Ctrl-C)."""
    return signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


class Preemption(Callback):
    """Handles SIGTERM, SIGUSR1 and SIGINT during training: the batch in flight finishes, then last.ckpt is saved.

    The handler only records the signal. At the end of every training batch (and epoch) the ranks agree (an
    all-reduce of the signal number) and all of them raise Lightning's flag at the same step, so the collective
    checkpoint save that follows cannot deadlock. Lightning's own handlers are replaced for the duration of the
    fit: they set the flag on whichever rank got the signal and even broadcast from inside the handler, which hangs
    DDP when ranks are signalled at different steps. Lightning restores every original handler at teardown.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.saved: Path | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning registered its handlers (Trainer._run), so these win; its teardown puts the originals back
        for signum in STOP_SIGNALS:
            if signum != signal.SIGINT or _catches_sigint():
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received:  # asked twice: the user wants out now
            raise Interrupted(TWICE)
        self.received = self.received or signum

    def _agree(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signum = self.received or 0
        if trainer.world_size > 1:  # every rank takes the same decision at the same step
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device), reduce_op="max"))
        if signum:
            self.received = signum
            trainer._signal_connector.received_sigterm = True  # Lightning's loops stop after this batch or epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._agree(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._agree(trainer, pl_module)  # a signal during the epoch's last validation stops after the epoch

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        keeper = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if keeper is not None and keeper.path is not None and trainer.state.fn == "fit":
            self.saved = keeper.save(trainer)
            if trainer.is_global_zero:  # the error line says it too; this is for the log file
                log.info("%s: saved %s at epoch %d, step %d", signal.Signals(self.received or signal.SIGTERM).name,
                         self.saved, trainer.current_epoch, trainer.global_step)


def stop_message(signum: int, trainer: pl.Trainer, saved: Path | None = None) -> str:
    """'interrupted at epoch E, step S; resume with ckpt_path=<run dir>' and its SIGTERM/SIGUSR1 forms."""
    where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
    head = f"interrupted {where}" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name} {where}"
    last = saved or last_checkpoint(trainer)
    if last is None or not last.is_file():
        return f"{head}; no checkpoint saved yet, nothing to resume"
    resume = f"resume with ckpt_path={trainer.default_root_dir}"
    if saved and signum != signal.SIGINT:  # pre-emption logs are read later: say which file holds the state
        return f"{head}; checkpoint saved to {saved}; {resume}"
    return f"{head}; {resume}"


def preempted(trainer: pl.Trainer, signum: int | None = None) -> Preempted:
    """The `Preempted` (or, for SIGINT, `Interrupted`) error for a trainer whose loops stopped on a signal."""
    keeper = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
    signum = signum or (keeper.received if keeper else None) or signal.SIGTERM
    message = stop_message(signum, trainer, keeper.saved if keeper else None)
    return Interrupted(message) if signum == signal.SIGINT else Preempted(signum, message)


@contextlib.contextmanager
def _ctrl_c_stops(trainer: pl.Trainer) -> Iterator[None]:
    """Ctrl-C outside the training loop (setup, sanity check, testing): `Interrupted` at once, not Lightning's
    KeyboardInterrupt handling (a notice, then exit status 1). Inside the loop `Preemption`'s handler takes over."""
    if not _catches_sigint():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise preempted(trainer, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stoppable(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `trainer.fit` / `trainer.test`: a signal ends them with `Preempted` / `Interrupted` instead of status 0
    or 1 (a Lightning misconfiguration becomes one line where every task error is reported: `runner.guarded`)."""
    trainer = method.__self__

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with _ctrl_c_stops(trainer):
                result = method(*args, **kwargs)
        except SIGTERMException:
            raise preempted(trainer) from None
        keeper = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
        if keeper is not None and keeper.received:  # signalled after the last batch: the fit is complete, stop here
            raise preempted(trainer)
        return result

    return call
