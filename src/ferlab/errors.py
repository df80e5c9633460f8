"""The exception types users see: `FerlabError` for mistakes (the CLI prints its message as one line and exits 1),
`Preempted` / `Interrupted` for runs stopped by a signal after saving (exit status 128 + the signal number).

Light on purpose (no torch, no Lightning): the CLI, the runner and the sweeper test for these types.
"""

import signal


class FerlabError(Exception):
    """A user-facing error (bad file, row, key or value). The message names what is wrong and where."""


class DataNotFound(FerlabError):
    """A dataset's file or folder is not on disk (ferlab never downloads a dataset)."""


class DiskFull(FerlabError):
    """A write failed because its filesystem is full; what was written before is intact."""


class Preempted(SystemExit):
    """A run stopped by a signal (SIGTERM, SIGUSR1) after saving its state; the exit code is 128 + the signal number.

    A SystemExit, so it passes through code that catches Exception (Hydra's job runner): a sweep stops too.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.message = signum, message

    def __str__(self) -> str:
        return self.message


class Interrupted(Preempted):
    """Ctrl-C (SIGINT): the run saved its state and stopped, exit code 130."""

    def __init__(self, message: str) -> None:
        super().__init__(signal.SIGINT, message)


def resume_message(head: str, run_dir: object | None, saved: object | None = None) -> str:
    """The one wording of a stopped run's line: '<head>; [checkpoint saved to <saved>; ]resume with ckpt_path=<run dir>',
    or '<head>; no checkpoint saved yet, nothing to resume' when there is no run dir to resume (`run_dir` None)."""
    if run_dir is None:
        return f"{head}; no checkpoint saved yet, nothing to resume"
    kept = f"checkpoint saved to {saved}; " if saved else ""
    return f"{head}; {kept}resume with ckpt_path={run_dir}"


def stop_status(stop: BaseException) -> int:
    """The exit status of a stop: a `Preempted`'s (or any SystemExit's) integer code, else 130 (Ctrl-C)."""
    return stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 128 + signal.SIGINT
