"""How an Optuna search scales out and what pruning saves: `ferlab train -m hparams_search=optuna` on smoke-sized
trials (600 synthetic faces, one short epoch), one study in SQLite.

1. The same 12-trial study run by 1 worker process, then by 2 worker processes started together: wall time from
   the first start to the last exit, trials per minute, and the speed-up (1-worker wall / 2-worker wall). Each
   worker trains on one thread; batch size fixed at 32 and no pruner, so trials cost alike.
2. A search where half the configurations are hopeless (learning rate log-uniform over 1e-4..1.0: Adam above
   ~1e-2 learns nothing here), 4 epochs per trial, without a pruner and with the median pruner: epochs trained,
   trials pruned, wall time and the best value found.

    .venv/bin/python -m benchmarks.search_scale [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import child_env, cli, data_root, machine, table

TRIAL = ["debug=smoke", "logger=none", "test=false"]
FIXED = ["data.batch_size=32", "hydra.sweeper.pruner=none"]  # trials of equal cost, each run to its end
HOPELESS = ["optim.lr=tag(log, interval(1e-4, 1.0))", "trainer.max_epochs=4", "data.batch_size=32"]


def workers(n: int, study_dir: Path, overrides: list[str]) -> float:
    """Start `n` workers on one SQLite study under `study_dir`; the wall seconds until all have exited."""
    args = [sys.executable, "-m", "ferlab", "train", "-m", "hparams_search=optuna", *TRIAL,
            f"hydra.sweeper.storage=sqlite:///{study_dir / 'study.db'}", "hydra.sweeper.study_name=bench", *overrides]
    start = time.perf_counter()
    env = child_env(data_root(), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([*args, f"hydra.sweep.dir={study_dir / f'worker{i}'}"], cwd=data_root(), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(n)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"worker exited {proc.returncode}: {err[-2000:]}")
    return wall


def trials(study_dir: Path) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="bench", storage=f"sqlite:///{study_dir / 'study.db'}").trials


def epochs(study: list) -> int:
    """Epochs trained over all trials (metrics.json of each trial's run)."""
    dirs = [Path(t.user_attrs["ferlab_run"]["dir"]) for t in study if "ferlab_run" in t.user_attrs]
    return sum(json.loads((d / "metrics.json").read_text())["epochs"] for d in dirs if (d / "metrics.json").exists())


def steady_rate(done: list) -> float:
    """Trials per minute once every worker has started: completions after the first one, over the time since."""
    ends = sorted(t.datetime_complete for t in done)
    span = (ends[-1] - ends[0]).total_seconds()
    return (len(ends) - 1) / span * 60 if span > 0 else float("nan")


def scaling(tmp: Path, n_trials: int) -> str:
    rows, walls = [], {}
    for n in (1, 2):
        study_dir = tmp / f"scale{n}"
        wall = walls[n] = workers(n, study_dir, [f"hydra.sweeper.n_trials={n_trials}", *FIXED])
        done = [t for t in trials(study_dir) if t.state.name == "COMPLETE"]
        rows.append((n, len(done), f"{wall:.1f}", f"{len(done) / wall * 60:.1f}", f"{steady_rate(done):.1f}",
                     f"{walls[1] / wall:.2f}"))
    return table(["workers", "complete trials", "wall s", "trials / min", "trials / min after start-up",
                  "speed-up (wall)"], rows, right=(0, 1, 2, 3, 4, 5))


def pruning(tmp: Path, n_trials: int) -> str:
    rows = []
    for name, pruner in (("none", "none"), ("median", "{_target_:optuna.pruners.MedianPruner,n_startup_trials:2}")):
        study_dir = tmp / f"prune-{name}"
        wall = workers(1, study_dir, [f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.pruner={pruner}",
                                      *HOPELESS])
        study = trials(study_dir)
        states = [t.state.name for t in study]
        best = max((t.value for t in study if t.state.name == "COMPLETE"), default=None)
        rows.append((name, len(study), states.count("PRUNED"), states.count("FAIL"), epochs(study),
                     f"{wall:.1f}", "-" if best is None else f"{best:.4f}"))
    return table(["pruner", "trials", "pruned", "failed", "epochs trained", "wall s", "best val/acc"], rows,
                 right=(1, 2, 3, 4, 5, 6))


def main(quick: bool = False) -> str:
    """Both tables as markdown."""
    n_scale, n_prune = (4, 4) if quick else (12, 12)
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-") as tmp:
        workers(1, Path(tmp) / "warm-up", ["hydra.sweeper.n_trials=1"])  # renders and caches the data once
        scale = scaling(Path(tmp), n_scale)
        prune = pruning(Path(tmp), n_prune)
    return "\n".join([
        "### Hyperparameter search: workers and pruning", "",
        f"Machine: {machine()}. Each worker is one `ferlab train -m hparams_search=optuna {' '.join(TRIAL)}` "
        "process on one thread; all workers share one SQLite study.", "",
        f"{n_scale} trials, {' '.join(FIXED)}, by 1 worker and by 2 workers started together:", "", scale, "",
        f"{n_prune} trials of 4 epochs over `optim.lr=tag(log, interval(1e-4, 1.0))` (half the log range hopeless), "
        "one worker, without a pruner and with the median pruner (from the third trial on):", "", prune, "",
        "Wall times include each worker's start-up (importing torch and Lightning, a few seconds, slower when two "
        "processes import at once); \"after start-up\" counts the completions after the first one over the time "
        "since. The speed-up of two workers is bounded by the cores (2 here) and by that start-up.",
    ])


if __name__ == "__main__":
    cli("search_scale", main, __doc__.splitlines()[0])
