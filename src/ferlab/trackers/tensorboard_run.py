"""`logger=tensorboard`: Lightning's TensorBoardLogger, whose event writes on a full disk end the curves, not the run.

TensorBoard's writer thread keeps the error of a failed write and raises it at the next write, flush or close, and
Lightning reports it as a value it cannot log. Here a full disk (ENOSPC, EDQUOT) instead stops the events with one
warning line at the end of the run, as a tracker that stops answering does; checkpoints and metrics.json are
written as before (a disk that stays full ends the run there, with the one-line disk-full error).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger

from ferlab import trackers
from ferlab.runs.io import disk_full


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger; after a write fails on a full disk, the rest of the events are dropped."""

    full = False  # a write failed on a full disk: nothing more is written

    def _write(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self.full:
            return
        try:
            write(*args, **kwargs)
        except Exception as e:
            if not disk_full(e, Path(self.root_dir)):
                raise
            self.full = True
            with contextlib.suppress(Exception):  # stop the writer thread; what it holds cannot be written
                self.experiment.close()
            trackers.warn(f"TensorBoard events in {self.log_dir} stopped ({trackers.one_line(e)}): the disk is full; "
                          "the run went on without them")

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self._write(super().log_metrics, metrics, step)

    def log_hyperparams(self, params: Any, metrics: Any = None, step: int | None = None) -> None:
        self._write(super().log_hyperparams, params, metrics, step)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self._write(super().log_graph, model, input_array)

    def save(self) -> None:
        self._write(super().save)

    def finalize(self, status: str) -> None:
        self._write(super().finalize, status)
