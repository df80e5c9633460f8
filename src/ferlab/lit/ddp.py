"""Lightning's DDP strategy, made to fit ferlab's runner.

Why not Lightning's default `ddp` launcher (popen): it re-executes `sys.argv` once per extra rank. ferlab's command
line is `ferlab <task> ...` rewritten by `ferlab.cli`, tests and notebooks call `run_train(cfg)` in-process,
and jobs of a Hydra sweep (joblib workers, submitit pickles) are not re-runnable scripts, so ferlab launches
ranks with `spawn` (or `fork`/`forkserver`) instead, which works from all of them. Three fixes on top:

- the fit state of rank 0 (epochs, global step, every callback's state: metric history, best checkpoint) is sent
  back to the main process, and the main process sets the datamodule up too, so metrics.json written there is the
  same as after a single-process run;
- evaluation shards are not padded: Lightning's DistributedSampler repeats samples to even out the ranks, which
  would count some validation/test images twice; here each image is evaluated exactly once, and torchmetrics and
  `sync_dist` reduce over all ranks, so val/acc equals the single-process value;
- a worker stopped by SIGTERM/SIGUSR1 saves last.ckpt and exits with 128 + signal; the main process forwards
  those signals to its workers and ends with `Preempted` instead of waiting for a result that never comes;
  a ferlab error in a worker (e.g. the NaN guard) reaches the user as the same one line.

Under SLURM (`trainer=ddp_multinode`) ranks are SLURM tasks and no launcher is involved.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.strategies import DDPStrategy as LightningDDP
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.trainer import call
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.data import _update_dataloader
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException
from torch.utils.data import DataLoader, DistributedSampler

from ferlab.errors import FerlabError
from ferlab.lit.preemption import SIGNALS, Preempted, preempted


class StatefulLauncher(_MultiProcessingLauncher):
    """Process launcher returning rank 0's loop and callback state, and handling pre-emption signals."""

    def launch(self, function: Any, *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any) -> Any:
        def forward(signum: int, frame: Any) -> None:
            self.kill(signum)  # the workers save and stop; their exit status tells the rest below

        in_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal needs it
        previous = {s: signal.signal(s, forward) for s in SIGNALS} if in_main_thread else {}
        try:
            results = super().launch(function, *args, trainer=trainer, **kwargs)
            for datamodule in [*args, *kwargs.values()]:  # sizes and normalization for metrics.json (cached: fast)
                if isinstance(datamodule, pl.LightningDataModule):
                    datamodule.setup("fit")
            return results
        except ProcessRaisedException as e:  # a user error in a worker stays one line: "<module>.<Error>: <message>"
            error = _ferlab_error(str(e), e.error_index)
            if error is None:
                raise
            raise error from None
        except ProcessExitedException as e:
            signum = (e.exit_code or 0) - 128
            if signum not in SIGNALS:
                raise
            raise Preempted(signum, _stopped_message(trainer, signum, e)) from None
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _wrapping_function(self, process_idx: int, trainer: pl.Trainer | None, *args: Any, **kwargs: Any) -> None:
        try:
            super()._wrapping_function(process_idx, trainer, *args, **kwargs)
        except SIGTERMException as stop:  # a SystemExit(None) would exit 0 and leave the main process waiting
            if trainer is None:
                sys.exit(128 + signal.SIGTERM)
            # workers run the fit without Lightning's exception handling: call on_exception (Preemption saves
            # last.ckpt, a collective save every rank reaches at the same step) and tear down here
            call._interrupt(trainer, stop)
            trainer._teardown()
            sys.exit(preempted(trainer).code)

    def get_extra_results(self, trainer: pl.Trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            state = {"fit_loop": trainer.fit_loop.state_dict(), "callbacks": call._call_callbacks_state_dict(trainer)}
            buffer = io.BytesIO()
            torch.save(state, buffer)
            extra["ferlab_fit_state"] = buffer.getvalue()
        return extra

    def update_main_process_results(self, trainer: pl.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        if "ferlab_fit_state" in extra:
            state = torch.load(io.BytesIO(extra["ferlab_fit_state"]), weights_only=True)
            trainer.fit_loop.load_state_dict(state["fit_loop"])
            call._call_callbacks_load_state_dict(trainer, {"callbacks": state["callbacks"]})


def _ferlab_error(worker_traceback: str, rank: int) -> FerlabError | None:
    """The FerlabError (same class) a worker raised, from the last line of its traceback; None for other errors."""
    from hydra.utils import get_class

    kind, _, message = worker_traceback.strip().splitlines()[-1].partition(": ")
    if not kind.startswith("ferlab.") or not message:
        return None
    try:
        cls = get_class(kind)
    except Exception:  # not importable here: keep the message, lose the class
        cls = FerlabError
    return cls(f"rank {rank}: {message}") if issubclass(cls, FerlabError) else None


def _stopped_message(trainer: pl.Trainer | None, signum: int, e: ProcessExitedException) -> str:
    """What the main process says when its workers stopped on a signal."""
    head = f"stopped by {signal.Signals(signum).name} (rank {e.error_index} exited with {e.exit_code})"
    ckpt = trainer.checkpoint_callback if trainer is not None else None
    last = Path(ckpt.dirpath) / "last.ckpt" if ckpt is not None and getattr(ckpt, "dirpath", None) else None
    if last is None or not last.is_file():
        return f"{head}; no checkpoint saved"
    return f"{head}; checkpoint saved to {last}; resume with ckpt_path={last.parent.parent}"


class DDPStrategy(LightningDDP):
    """DDP with `start_method` spawn|fork|forkserver launched by `StatefulLauncher`; unpadded evaluation shards."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _MultiProcessingLauncher):
            self._launcher = StatefulLauncher(self, start_method=self._start_method)

    def process_dataloader(self, dataloader: object) -> object:
        dataloader = super().process_dataloader(dataloader)
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        sampler = getattr(dataloader, "sampler", None)
        # only evaluation loaders: an uneven number of training batches per rank would hang DDP's gradient sync
        if trainer is None or trainer.training or type(sampler) is not DistributedSampler or sampler.shuffle:
            return dataloader
        with contextlib.suppress(AssertionError):  # fewer images than ranks: keep Lightning's padded shards
            unpadded = UnrepeatedDistributedSampler(sampler.dataset, num_replicas=sampler.num_replicas,
                                                    rank=sampler.rank, shuffle=False)
            return _update_dataloader(dataloader, unpadded) if isinstance(dataloader, DataLoader) else dataloader
        return dataloader
