"""The end of a sweep: its results table in `<sweep dir>/report.md`, the failed jobs, a non-zero exit if any.

`SweepSummary` is a Hydra callback (conf/hydra/callbacks/ferlab.yaml). Jobs keep running when one fails
(the `ferlab` sweeper, hydra_plugins/ferlab_sweepers); each failed job leaves failed.json in its run dir,
so the summary works the same for jobs run in this process, in joblib workers or on SLURM nodes. A sweep stopped
by a signal (Ctrl-C, SIGTERM) lists its stopped and not-started jobs among the unfinished runs and exits with the
signal's status (130 for Ctrl-C); the same command with its `hydra.sweep.dir` and `ckpt_path=auto` continues it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ferlab.errors import DataNotFound, FerlabError
from ferlab.runs.runfiles import NOT_STARTED, STOPPED, write_json

log = logging.getLogger("ferlab.sweep")
# when every job failed for a dataset that is not on disk (e.g. the Lightning-Hydra template's habit of
# `-m 'experiment=glob(*)' debug=fdr` on a fresh clone)
NO_DATA_HINT = ("hint: every job failed because its dataset is not on disk; debug=smoke (one short epoch on synthetic "
                "faces) or data=synthetic runs the same sweep without downloads")


class SweepFailed(SystemExit):
    """Ends a sweep in which some jobs failed with exit status 1, after all jobs ran."""


def mark_not_started(job_dir: Path, overrides: list[str]) -> None:
    """A job the sweeper did not start because the sweep was stopped: its overrides (for the report's table) and a
    failed.json saying so, both replaced when the job runs (`ckpt_path=auto` in the same sweep dir)."""
    import yaml

    from ferlab.runs.io import atomic_write_text

    atomic_write_text(job_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(overrides))
    write_json(job_dir / "failed.json", {"type": NOT_STARTED, "message": "not started: the sweep was stopped first"})


def _stop(runs: list, sweep_dir: Path) -> tuple[str, int] | None:
    """The closing line and exit status of a sweep a signal stopped (None when none did)."""
    import json

    stopped, waiting = [], 0
    for run in runs:
        try:
            info = json.loads((run.path / "failed.json").read_text())
        except (OSError, ValueError):
            continue
        waiting += info.get("type") == NOT_STARTED
        if info.get("type") in STOPPED and "exit_code" in info:  # stopped by a signal
            stopped.append((run, info))
    if not stopped:
        return None
    run, info = stopped[0]
    return (f"sweep stopped: job {run.path.name}: {info.get('message')}; {waiting} job{'s' * (waiting != 1)} not "
            f"started; to continue the sweep, run the same command with hydra.sweep.dir={sweep_dir} ckpt_path=auto",
            int(info["exit_code"]))


def _job_dir(job_return: Any) -> Path | None:
    hydra_cfg = getattr(job_return, "hydra_cfg", None)
    return Path(hydra_cfg.hydra.runtime.output_dir) if hydra_cfg is not None else None


def record_failure(job_return: Any) -> None:
    """failed.json for a job that failed outside ferlab's own guard (e.g. in a Hydra callback)."""
    from hydra.core.utils import JobStatus

    run_dir = _job_dir(job_return)
    if job_return.status != JobStatus.FAILED or run_dir is None or (run_dir / "failed.json").exists():
        return
    from ferlab.runs.runfiles import write_failed

    error = job_return._return_value  # the `return_value` property would re-raise it
    write_failed(run_dir, error if isinstance(error, BaseException) else RuntimeError(str(error)))


def sweep_runs(sweep_dir: Path) -> list:
    """The runs of a sweep dir (none when it was never made), read once for the summary and the stop line."""
    from ferlab.search.report import find_runs

    return find_runs([sweep_dir]) if sweep_dir.is_dir() else []


def summarize(sweep_dir: Path, runs: list, out=sys.stdout, err=sys.stderr) -> int:
    """Write report.md into `sweep_dir`, print the table and the failures of its `runs`; return how many failed."""
    from ferlab.search.report import build_report, to_markdown, write_report

    if not runs:
        print(f"ferlab: sweep {sweep_dir}: no jobs ran", file=err)
        return 0
    try:
        report = build_report(runs, [sweep_dir])
    except FerlabError as e:  # a table problem must not hide the jobs' outcome
        print(f"ferlab: sweep {sweep_dir}: no table ({e})", file=err)
        report = None
    if report is not None:
        write_report(report, sweep_dir)
        out.write(to_markdown(report))
        print(f"\nsweep dir: {sweep_dir}  (report.md; tensorboard --logdir {sweep_dir})", file=out)
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        print(f"ferlab: error: {len(failed)} of {len(runs)} jobs failed:", file=err)
        for run in failed:
            print(f"  {run.path.name}: {run.error}  ({run.path / 'failed.json'})", file=err)
        if all(run.error_type == DataNotFound.__name__ for run in failed):
            print(NO_DATA_HINT, file=err)
    return len(failed)


def stopped(sweep_dir: Path, runs: list, err=sys.stderr) -> int:
    """After `summarize`: when a signal stopped the sweep, say so in one line and return its exit status (else 0)."""
    stop = _stop(runs, sweep_dir)
    if stop is None:
        return 0
    print(f"ferlab: error: {stop[0]}", file=err)
    return stop[1]


class SweepSummary(Callback):
    """Hydra callback: failed.json for every failed job; after a multirun, the table and the failures."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        record_failure(job_return)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sys.stdout.flush()
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = sweep_runs(sweep_dir)
        failed = summarize(sweep_dir, runs)
        code = stopped(sweep_dir, runs)
        if code or failed:
            raise SweepFailed(code or 1)
