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
  those signals to its workers and ends with `Preempted` instead of waiting for a result that never comes. Ctrl-C
  reaches every process of the terminal's group: workers ignore it and the main process asks them to stop as for
  SIGTERM (a second Ctrl-C kills them at once), then ends with `Interrupted`;
- an error in a worker reaches the user as one line, like in a single process: a FerlabError (e.g. the NaN guard)
  or a Lightning misconfiguration (e.g. a `limit_val_batches` that selects no batch) with its message, any other
  error with its type and first line (the worker's traceback is kept as a note for bugs). The other workers are
  stopped at once instead of after torch's 30-second grace period.

Under SLURM (`trainer=ddp_multinode`) ranks are SLURM tasks and no launcher is involved.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import sys
import threading
import traceback
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

from ferlab.checkpoints.ckpt_file import load_checkpoint
from ferlab.checkpoints.preemption import SIGNALS, TWICE, preempted
from ferlab.checkpoints.resilience import last_checkpoint
from ferlab.errors import FerlabError, Interrupted, Preempted, resume_message
from ferlab.lit.summary import quiet_lightning
from ferlab.lit.user_errors import as_user_error, one_line
from ferlab.runs.io import remove_temporaries

POLL_S = 0.2  # how often the main process looks for a worker that failed


class WorkerError(RuntimeError):
    """What a worker's failure sends to the main process: one JSON line (torch passes on the traceback text)."""

    @classmethod
    def of(cls, error: BaseException) -> WorkerError:
        user = as_user_error(error)
        kind = type(user or error)
        return cls(json.dumps({"module": kind.__module__, "type": kind.__qualname__, "message": str(user or error),
                               "user": user is not None or isinstance(error, FerlabError),
                               "per_rank": isinstance(error, FerlabError), "traceback": traceback.format_exc()}))


class StatefulLauncher(_MultiProcessingLauncher):
    """Process launcher returning rank 0's loop and callback state, and handling signals and worker errors."""

    def launch(self, function: Any, *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any) -> Any:
        received: list[int] = []

        def forward(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and received:  # a second Ctrl-C: stop now
                self._kill_all(trainer)
                raise Interrupted(TWICE)
            received.append(signum)
            self.kill(signal.SIGTERM if signum == signal.SIGINT else signum)  # workers save and stop

        in_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal needs it
        previous = {s: signal.signal(s, forward) for s in (*SIGNALS, signal.SIGINT)} if in_main_thread else {}
        done = threading.Event()
        threading.Thread(target=self._stop_all_when_one_fails, args=(done, trainer), daemon=True).start()
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")  # "Terminating process ..." after a failure:
        level, spawn_log.level = spawn_log.level, logging.ERROR  # the workers left are stopped on purpose
        try:
            results = super().launch(function, *args, trainer=trainer, **kwargs)
            for datamodule in [*args, *kwargs.values()]:  # sizes and normalization for metrics.json (cached: fast)
                if isinstance(datamodule, pl.LightningDataModule):
                    datamodule.setup("fit")
            return results
        except ProcessRaisedException as e:
            raise _worker_error(str(e), e.error_index) from None
        except ProcessExitedException as e:
            signum = (e.exit_code or 0) - 128
            if signum not in SIGNALS:
                raise
            signum = received[0] if received else signum
            message = _stopped_message(trainer, signum, e)
            raise (Interrupted(message) if signum == signal.SIGINT else Preempted(signum, message)) from None
        finally:
            done.set()
            spawn_log.setLevel(level)
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_all_when_one_fails(self, done: threading.Event, trainer: pl.Trainer | None) -> None:
        """Kill the other workers as soon as one exits with an error: they would wait in a collective operation
        for it until torch's join, which gives them 30 s after SIGTERM before killing them."""
        while not done.wait(POLL_S):
            procs = list(getattr(self, "procs", []))
            if any(p.exitcode not in (None, 0) and p.exitcode - 128 not in SIGNALS for p in procs):
                self._kill_all(trainer)
                return

    def _kill_all(self, trainer: pl.Trainer | None) -> None:
        """SIGKILL every worker; then remove the temporary file a checkpoint save they were in left behind."""
        procs = list(getattr(self, "procs", []))
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5)
        last = last_checkpoint(trainer) if trainer is not None else None
        if last is not None and last.parent.is_dir():
            remove_temporaries(last.parent, last.suffix)

    def _wrapping_function(self, process_idx: int, trainer: pl.Trainer | None, *args: Any, **kwargs: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (see `launch`)
        quiet_lightning()  # a spawned worker starts without the main process's log and warning filters
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
        except Exception as e:
            raise WorkerError.of(e) from None

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


def _worker_error(worker_traceback: str, rank: int) -> BaseException:
    """The main process's error for a failed worker: the FerlabError (same class) it raised or its config mistake,
    else a RuntimeError naming the worker's error in one line, with its traceback as a note."""
    from hydra.utils import get_class

    prefix = f"{WorkerError.__module__}.{WorkerError.__qualname__}: "
    line = next((ln for ln in reversed(worker_traceback.splitlines()) if ln.startswith(prefix)), None)
    if line is None:  # failed outside our wrapper (e.g. while unpickling its arguments)
        error = RuntimeError(f"rank {rank} failed: {one_line(worker_traceback.strip().splitlines()[-1])}")
        error.add_note(worker_traceback)
        return error
    info = json.loads(line[len(prefix):])
    if info["user"]:
        try:
            cls = get_class(f"{info['module']}.{info['type']}")
        except Exception:  # not importable here: keep the message, lose the class
            cls = FerlabError
        rank_of = f"rank {rank}: " if info["per_rank"] else ""  # a config mistake is every rank's
        return (cls if issubclass(cls, FerlabError) else FerlabError)(f"{rank_of}{info['message']}")
    error = RuntimeError(f"rank {rank}: {info['type']}: {one_line(info['message'])}")
    error.add_note(info["traceback"])
    return error


def _stopped_message(trainer: pl.Trainer | None, signum: int, e: ProcessExitedException) -> str:
    """What the main process says when its workers stopped on a signal."""
    name = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    head = f"{name} (rank {e.error_index} exited with {e.exit_code})"
    last = last_checkpoint(trainer) if trainer is not None else None
    if last is None or not last.is_file():
        return resume_message(head, None)
    return resume_message(f"{head}{_saved_at(last)}", trainer.default_root_dir, last)


def _saved_at(path: Path) -> str:
    """' at epoch E, step S' of the state the workers saved (this process's trainer never ran a step)."""
    try:  # mmap: only the pickled metadata is read, not the tensors
        state = load_checkpoint(path, mmap=True)
        return f" at epoch {int(state['epoch'])}, step {int(state['global_step'])}"
    except Exception:  # the message matters more than the position
        return ""


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
