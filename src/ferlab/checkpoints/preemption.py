"""Stopping on a signal: SIGTERM and SIGUSR1 (cluster pre-emption) and SIGINT (Ctrl-C) save last.ckpt at the next
point from which a resume is exact and end the run with exit status 128 + the signal number and one line saying
how to resume.

Lightning 2.6 turns SIGTERM into a flag its loops check after a training batch (and the validation it triggers),
after an epoch, and after every validation batch but the last; they then raise `SIGTERMException`, a `SystemExit`
whose code is None, so the process would end with status 0 as if the run had finished (and it does nothing for
SIGUSR1 outside SLURM, which then kills the process). Ctrl-C becomes a KeyboardInterrupt wherever it lands, which
Lightning answers with "Detected KeyboardInterrupt" and exit status 1, saving nothing. Not every one of those
points can be resumed: stopped in the middle of a validation (the flag raised on an epoch's last batch), Lightning
resumes as if the validation and the epoch were done and the fit ends short; stopped between the micro-batches of
an optimizer step, the accumulated gradients are lost. So the handlers here only record the signal, and
`Preemption` raises Lightning's flag itself, with every rank agreeing, only where the restart is exact:

- after a training batch that stepped the optimizer, is not the epoch's last and is not followed by a validation
  (Lightning stops right after it);
- at the end of an epoch, after its validation and its epoch-end hooks (Lightning stops after the epoch).

A signal anywhere else in the fit (the sanity check, a validation, epoch-end hooks, a checkpoint save, a
micro-batch) waits for the next such point. The flag is never visible while a validation runs. Outside the
training loop (setup before the sanity check, the test stage after fit) a signal stops at once without saving:
the checkpoints written before are exact resume points (the test stage is simply run again). A second Ctrl-C stops
at once: whatever is being written is abandoned (checkpoints are written to a temporary file and renamed).
`stoppable` turns the stop into `Preempted` (143 for SIGTERM, 138 for SIGUSR1) or `Interrupted` (130).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ferlab.checkpoints.fit_audit import unsafe_state
from ferlab.checkpoints.resilience import LastCheckpoint, last_checkpoint
from ferlab.errors import Interrupted, Preempted, resume_message

__all__ = ["SIGNALS", "Interrupted", "Preempted", "Preemption", "preempted", "stoppable"]

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # pre-emption: a DDP main process forwards these to its workers
STOP_SIGNALS = (*SIGNALS, signal.SIGINT)
TWICE = "interrupted twice: stopped at once without saving (checkpoints written before are intact)"


def _catches_sigint() -> bool:
    """False where SIGINT is ignored (nohup, background jobs, DDP workers whose main process handles Ctrl-C)."""
    return signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal.signal works only there


def batch_end_is_safe(trainer: pl.Trainer) -> bool:
    """Whether Lightning, stopping right after the training batch now ending, resumes exactly: the batch stepped
    the optimizer (no accumulated gradients pending), is not the epoch's last (nor the one reaching max_steps: the
    epoch end follows, where the stop waits) and no validation follows it."""
    loop = trainer.fit_loop.epoch_loop
    return (not loop._should_accumulate() and not loop._is_training_done
            and not loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


class Preemption(Callback):
    """Handles SIGTERM, SIGUSR1 and SIGINT during the fit: last.ckpt is saved at the next exact resume point.

    The handler only records the signal. At those points (`batch_end_is_safe`, the epoch end) the ranks agree (an
    all-reduce of the signal number) and all of them raise Lightning's flag at the same step, so the collective
    checkpoint save that follows cannot deadlock. Lightning's own handlers are replaced from the sanity check on:
    they set the flag on whichever rank got the signal, at any point, and even broadcast from inside the handler,
    which hangs DDP when ranks are signalled at different steps. Lightning restores every original handler at
    teardown.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.saved: Path | None = None

    def _take_over(self, trainer: pl.Trainer) -> None:
        """Install the handlers (after Lightning registered its own in Trainer._run, so these win); a SIGTERM its
        handler caught before this becomes ours, acted on at the next safe point."""
        connector = trainer._signal_connector
        if connector.received_sigterm:
            connector.received_sigterm = False
            self.received = self.received or signal.SIGTERM
        if _in_main_thread():
            for signum in STOP_SIGNALS:
                if signum != signal.SIGINT or _catches_sigint():
                    signal.signal(signum, self._handle)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over(trainer)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received:  # asked twice: the user wants out now
            raise Interrupted(TWICE)
        self.received = self.received or signum

    def _agree(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raise Lightning's flag when any rank was signalled (called at the same points on every rank)."""
        signum = self.received or 0
        if trainer.world_size > 1:  # every rank takes the same decision at the same step
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device), reduce_op="max"))
        if signum:
            self.received = signum
            trainer._signal_connector.received_sigterm = True  # Lightning's loops stop after this batch or epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if batch_end_is_safe(trainer):
            self._agree(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._agree(trainer, pl_module)  # after the epoch's validations; Lightning stops once the epoch completed

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a flag up here (a time-based val_check_interval validating after a batch judged safe, or a callback
        # raising it the way Lightning's handler does) would stop in the middle of this validation: the stop waits
        connector = trainer._signal_connector
        if connector.received_sigterm:
            connector.received_sigterm = False
            self.received = self.received or signal.SIGTERM

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        keeper = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if keeper is None or keeper.path is None:
            return
        unsafe = unsafe_state(trainer.fit_loop.state_dict(), trainer.accumulate_grad_batches)
        if unsafe:  # the flag was raised by someone else at a point no resume continues from: keep the last one
            log.warning("not saving %s: stopped %s; a resume continues from the last one saved", keeper.path, unsafe)
            return
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
        return resume_message(head, None)
    # pre-emption logs are read later: say which file holds the state
    return resume_message(head, trainer.default_root_dir, saved if signum != signal.SIGINT else None)


def preempted(trainer: pl.Trainer, signum: int | None = None) -> Preempted:
    """The `Preempted` (or, for SIGINT, `Interrupted`) error for a trainer whose loops stopped on a signal."""
    keeper = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
    signum = signum or (keeper.received if keeper else None) or signal.SIGTERM
    message = stop_message(signum, trainer, keeper.saved if keeper else None)
    return Interrupted(message) if signum == signal.SIGINT else Preempted(signum, message)


@contextlib.contextmanager
def signals_stop(trainer: pl.Trainer) -> Iterator[None]:
    """A stop signal outside the training loop (setup, testing, teardown) raises `Preempted` / `Interrupted` at
    once: nothing is being saved there, and the checkpoints written before are exact resume points. Not Lightning's
    handling: a KeyboardInterrupt notice and exit status 1, SIGTERM's status 0, and SIGUSR1's default action (the
    process killed without a word). From the sanity check to the end of training `Preemption`'s handlers take over;
    Lightning's SIGTERM handler, installed for the call, calls this one too. `ferlab train` holds it from the fit
    to its last file (the gap between fit and test, the run's files after the test)."""
    def stop(signum: int, frame: Any) -> None:
        raise preempted(trainer, signum)

    signums = [s for s in STOP_SIGNALS if s != signal.SIGINT or _catches_sigint()] if _in_main_thread() else []
    previous = {s: signal.signal(s, stop) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stoppable(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `trainer.fit` / `trainer.test`: a signal ends them with `Preempted` / `Interrupted` instead of status 0
    or 1 (a Lightning misconfiguration becomes one line where every task error is reported: `runner.guarded`)."""
    trainer = method.__self__

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with signals_stop(trainer):
                result = method(*args, **kwargs)
        except SIGTERMException:
            raise preempted(trainer) from None
        keeper = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
        if keeper is not None and keeper.received:  # signalled after the last safe point: the fit is complete
            raise preempted(trainer)
        return result

    return call
