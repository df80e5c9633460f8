"""The end of a sweep: its results table in `<sweep dir>/report.md`, the failed jobs, a non-zero exit if any.

`SweepSummary` is a Hydra callback (conf/hydra/callbacks/ferlab.yaml). Jobs keep running when one fails
(the `ferlab` sweeper, hydra_plugins/ferlab_sweepers); each failed job leaves failed.json in its run dir,
so the summary works the same for jobs run in this process, in joblib workers or on SLURM nodes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ferlab.errors import DataNotFound, FerlabError

log = logging.getLogger("ferlab.sweep")
# when every job failed for a dataset that is not on disk (e.g. the Lightning-Hydra template's habit of
# `-m 'experiment=glob(*)' debug=fdr` on a fresh clone)
NO_DATA_HINT = ("hint: every job failed because its dataset is not on disk; debug=smoke (one short epoch on synthetic "
                "faces) or data=synthetic runs the same sweep without downloads")


class SweepFailed(SystemExit):
    """Ends a sweep in which some jobs failed with exit status 1, after all jobs ran."""


def _job_dir(job_return: Any) -> Path | None:
    hydra_cfg = getattr(job_return, "hydra_cfg", None)
    return Path(hydra_cfg.hydra.runtime.output_dir) if hydra_cfg is not None else None


def record_failure(job_return: Any) -> None:
    """failed.json for a job that failed outside ferlab's own guard (e.g. in a Hydra callback)."""
    from hydra.core.utils import JobStatus

    run_dir = _job_dir(job_return)
    if job_return.status != JobStatus.FAILED or run_dir is None or (run_dir / "failed.json").exists():
        return
    from ferlab.runfiles import write_failed

    error = job_return._return_value  # the `return_value` property would re-raise it
    write_failed(run_dir, error if isinstance(error, BaseException) else RuntimeError(str(error)))


def summarize(sweep_dir: Path, out=sys.stdout, err=sys.stderr) -> int:
    """Write report.md into `sweep_dir`, print the table and the failures; return the number of failed jobs."""
    from ferlab.report import build_report, find_runs, to_markdown, write_report

    runs = find_runs([sweep_dir]) if sweep_dir.is_dir() else []
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


class SweepSummary(Callback):
    """Hydra callback: failed.json for every failed job; after a multirun, the table and the failures."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        record_failure(job_return)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sys.stdout.flush()
        if summarize(Path(config.hydra.sweep.dir)):
            raise SweepFailed(1)
