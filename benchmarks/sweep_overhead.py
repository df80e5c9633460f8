"""What a Hydra sweep adds per job: `ferlab train -m seed=1,...,N` with the basic (sequential, one process) and
joblib (worker processes) launchers, on a tiny job (600 faces, a narrow ResNet, one epoch).

Per-job overhead = sweep wall time x parallel workers / jobs - mean in-job time (metrics.json `wall_time_s`,
from `run_train`'s start to metrics.json), i.e. everything the launcher, Hydra's job set-up (run dir, config
files, logging) and process start-up cost, averaged over the jobs.

    .venv/bin/python -m benchmarks.sweep_overhead [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, cli, data_root, machine, table

JOB = ["data.source.num_images=600", "data.batch_size=64", "model.width=8", "trainer.max_epochs=1",
       "trainer.num_sanity_val_steps=0", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
       "logger=none", "test=false"]
LAUNCHERS = [("basic", ["hydra/launcher=basic"], 1),
             ("joblib, 2 workers", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 2)]


def sweep(launcher: list[str], jobs: int, sweep_dir: Path) -> tuple[float, list[float]]:
    """Wall seconds of the whole sweep, and each job's in-job seconds."""
    env = {**os.environ, "FERLAB_ROOT": str(data_root()), "PYTHONPATH": str(REPO)}
    env.pop("FERLAB_RUN_ID", None)
    seeds = ",".join(str(s) for s in range(1, jobs + 1))
    cmd = [sys.executable, "-m", "ferlab", "train", "-m", *JOB, *launcher, f"seed={seeds}",
           f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=data_root(), env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    inside = [json.loads(p.read_text())["wall_time_s"] for p in sorted(sweep_dir.glob("*/metrics.json"))]
    if len(inside) != jobs:
        raise RuntimeError(f"{sweep_dir}: {len(inside)} of {jobs} jobs wrote metrics.json")
    return wall, inside


def main(quick: bool = False) -> str:
    """The sweep table as markdown."""
    jobs = 2 if quick else 8
    rows = []
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-") as tmp:
        sweep(LAUNCHERS[0][1], 1, Path(tmp) / "warm-up")  # renders and caches the data once
        for name, launcher, workers in LAUNCHERS:
            wall, inside = sweep(launcher, jobs, Path(tmp) / name.split(",")[0])
            job_s = statistics.mean(inside)
            rows.append((name, jobs, f"{wall:.1f}", f"{job_s:.2f}", f"{wall * workers / jobs - job_s:.2f}"))
    return "\n".join([
        "### Sweep overhead per job", "",
        f"Machine: {machine()}. `ferlab train -m seed=1..{jobs}` on a tiny job: {' '.join(JOB)}.", "",
        table(["launcher", "jobs", "sweep wall s", "in-job s (mean)", "overhead per job s"], rows,
              right=(1, 2, 3, 4)), "",
        "The overhead includes starting Python and importing torch and Lightning once per process: the basic "
        "launcher pays it once per sweep, joblib once per worker.",
    ])


if __name__ == "__main__":
    cli("sweep_overhead", main, __doc__.splitlines()[0])
