"""SIGTERM and SIGUSR1 (cluster pre-emption): finish the current batch, save last.ckpt, exit non-zero.

Lightning 2.6 turns SIGTERM into a flag that its loops check after every batch; they then raise
`SIGTERMException`, a `SystemExit` whose code is None, so the process would end with status 0 as if the run had
finished (and it does nothing for SIGUSR1 outside SLURM). Here both signals raise that flag at a batch boundary
agreed by all ranks, the exception saves a checkpoint (`on_exception`), and `stoppable` turns it into
`Preempted`: exit status 128 + signal number (143 for SIGTERM, 138 for SIGUSR1) and one line saying where the
checkpoint is and how to resume. A signal during validation is acted on at the next training batch.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """A run stopped by a signal after saving its state; the exit code is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.message = signum, message

    def __str__(self) -> str:
        return self.message


class Preemption(Callback):
    """Handles SIGTERM and SIGUSR1 during training: the batch in flight finishes, then last.ckpt is saved.

    The handler only records the signal. At the end of every training batch the ranks agree (an all-reduce of
    the signal number) and all of them raise Lightning's flag at the same step, so the collective checkpoint
    save that follows cannot deadlock. Lightning's own handlers are replaced for the duration of the fit: they
    set the flag on whichever rank got the signal and even broadcast from inside the handler, which hangs DDP
    when ranks are signalled at different steps. Lightning restores every original handler at teardown.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.saved: Path | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning registered its handlers (Trainer._run), so these win; its teardown puts the originals back
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        signum = self.received or 0
        if trainer.world_size > 1:  # every rank takes the same decision at the same step
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device), reduce_op="max"))
        if signum:
            self.received = signum
            trainer._signal_connector.received_sigterm = True  # Lightning's loops stop after this batch

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        from ferlab.lit.resilience import LastCheckpoint

        keeper = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if keeper is not None and keeper.path is not None and trainer.state.fn == "fit":
            self.saved = keeper.save(trainer)
            log.warning("signal %s: saved %s at epoch %d, step %d", self.received, self.saved,
                        trainer.current_epoch, trainer.global_step)


def preempted(trainer: pl.Trainer) -> Preempted:
    """The `Preempted` error for a trainer whose loops stopped on a signal."""
    keeper = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
    signum = (keeper.received if keeper else None) or signal.SIGTERM
    name = signal.Signals(signum).name
    saved = keeper.saved if keeper else None
    where = (f"checkpoint saved to {saved}; resume with ckpt_path={saved.parent.parent}" if saved
             else "no checkpoint saved")
    return Preempted(signum, f"stopped by {name} at epoch {trainer.current_epoch}, step {trainer.global_step}; {where}")


def stoppable(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `trainer.fit` / `trainer.test` so that a signal ends them with `Preempted` instead of status 0."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except SIGTERMException:
            raise preempted(method.__self__) from None

    return call
