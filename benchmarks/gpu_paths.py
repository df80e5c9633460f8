"""ferlab's CUDA paths, run as a user runs them, on a machine with a GPU: the main job under `trainer=gpu` in each
precision, a resume after SIGTERM in the middle of an epoch compared bit for bit with the uninterrupted run (CUDA
RNG state, the fp16 loss scaler), `trainer=ddp` (NCCL, synchronized batch norm) on one GPU, and `model=timm`.

Every row is one `python -m ferlab train ...` process, as a user starts it; the table gives its exit status, wall
time (process start to exit, imports included), epochs, best validation and test accuracy, and what was checked.
The figures belong to the GPU named in the heading; the test suite cannot run these paths on a CPU-only machine.

    python -m benchmarks.gpu_paths [--quick]     # on a CUDA machine
    python -m benchmarks.gpu_paths --quick --cpu  # checks the script here: CPU stand-ins for each GPU option
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, machine, table, write

PRECISIONS = ("16-mixed", "bf16-mixed", "32-true")
RESUMED = ("32-true", "16-mixed")  # fp16 adds the loss scaler's state to what a resume must restore
EPOCHS = 3  # of the resume runs; the stop lands half-way through the second
# --cpu: what stands in for each GPU option when the script itself is checked on a machine without one
CPU_STANDINS = {"trainer=gpu": "trainer=cpu", "trainer=ddp": "trainer=ddp_sim", "trainer.devices=1": "trainer.devices=2",
                "trainer.precision=16-mixed": "trainer.precision=bf16-mixed"}


class Runner:
    """Runs `ferlab train` processes under one data root (their output in <root>/<name>.<row>.log) and collects
    the table's rows."""

    def __init__(self, root: Path, quick: bool, cpu: bool) -> None:
        self.root, self.quick, self.cpu = root, quick, cpu
        self.rows: list[list[Any]] = []
        self.size = ["data.source.num_images=600", "trainer.max_epochs=1"] if quick else []

    def train(self, name: str, *overrides: str, timeout: float = 600) -> tuple[int, float, Path, str]:
        """(exit status, wall s, run dir, last stderr line) of `ferlab train <overrides>` run into <root>/<name>."""
        args = [CPU_STANDINS.get(o, o) if self.cpu else o for o in overrides]
        run = self.root / name
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "ferlab", "train", *args, f"hydra.run.dir={run}",
                            "callbacks.rich_progress_bar=null"], cwd=self.root, env=child_env(self.root),
                           capture_output=True, text=True, timeout=timeout)
        (self.root / f"{name}.{len(self.rows)}.log").write_text(r.stdout + r.stderr)  # for a failure's whole story
        lines = r.stderr.strip().splitlines()
        return r.returncode, time.perf_counter() - start, run, lines[-1] if lines else ""

    def row(self, check: str, rc: int, wall: float, run: Path, verdict: str) -> None:
        metrics = _metrics(run)
        best = (metrics.get("best_epoch_metrics") or {}).get("val/acc")
        test = (metrics.get("test") or {}).get("test/acc")
        self.rows.append([check, rc, f"{wall:.1f}", metrics.get("epochs", "–"), _acc(best), _acc(test), verdict])
        print(f"{check}: rc {rc}, {wall:.1f} s, {verdict}", flush=True)

    def trains(self, check: str, name: str, *overrides: str) -> None:
        """A row for a run that should simply train and test."""
        rc, wall, run, last = self.train(name, *overrides)
        self.row(check, rc, wall, run, "trained and tested" if rc == 0 else last)


def _metrics(run: Path) -> dict:
    """metrics.json, or {} for a run that wrote none (it failed or was stopped)."""
    from ferlab.runs.runfiles import read_metrics

    return read_metrics(run) if (run / "metrics.json").is_file() else {}


def _acc(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _same_run(a: Path, b: Path) -> bool:
    """Two runs with the same epoch history and, bit for bit, the same last.ckpt state_dict."""
    import torch

    from ferlab.checkpoints.ckpt_file import load_checkpoint

    if _metrics(a).get("history") != _metrics(b).get("history"):
        return False
    wa, wb = (load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"] for run in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def main_job(r: Runner) -> None:
    """The README's main job (`ferlab train`) on the GPU, in each precision `trainer=gpu` offers."""
    for precision in PRECISIONS:
        r.trains(f"`ferlab train trainer=gpu trainer.precision={precision}`", f"main_{precision}", "trainer=gpu",
                 f"trainer.precision={precision}", *r.size)


def resume(r: Runner) -> None:
    """Deterministic kernels: the same command twice gives the same run; a SIGTERM in the middle of epoch 2, then
    `ckpt_path=auto`, ends with the same history and the same weights bit for bit."""
    for precision in RESUMED:
        common = ["trainer=gpu", f"trainer.precision={precision}", "trainer.deterministic=true",
                  "trainer.benchmark=false", f"trainer.max_epochs={EPOCHS}", "seed=5", "test=false", "logger=none",
                  f"data.source.num_images={600 if r.quick else 1200}"]
        rc, wall, ref, last = r.train(f"ref_{precision}", *common)
        if rc != 0:
            r.row(f"resume, {precision}: reference run", rc, wall, ref, last)
            continue
        again = r.train(f"again_{precision}", *common)
        r.row(f"resume, {precision}: the same command again", again[0], again[1], again[2],
              "identical run" if again[0] == 0 and _same_run(again[2], ref) else "DIFFERS from the first run")
        per_epoch = _metrics(ref)["global_step"] // EPOCHS
        stop = ["+callbacks.stop._target_=tests.test_resume.SignalAtStep", f"+callbacks.stop.step={per_epoch * 3 // 2}",
                f"+callbacks.stop.signum={int(signal.SIGTERM)}"]
        rc, wall, run, last = r.train(f"stopped_{precision}", *common, *stop)
        r.row(f"resume, {precision}: SIGTERM at step {per_epoch * 3 // 2} of {per_epoch * EPOCHS}", rc, wall, run,
              "exit 143, saved" if rc == 128 + signal.SIGTERM else f"expected exit 143: {last}")
        rc, wall, run, last = r.train(f"stopped_{precision}", *common, "ckpt_path=auto")
        r.row(f"resume, {precision}: `ckpt_path=auto`", rc, wall, run,
              "history and weights equal the uninterrupted run" if rc == 0 and _same_run(run, ref)
              else f"NOT EXACT {last}")


def ddp(r: Runner) -> None:
    """`trainer=ddp` on one GPU: NCCL process group, spawned worker, SyncBatchNorm, DistributedSampler."""
    r.trains("`ferlab train trainer=ddp trainer.devices=1`", "ddp", "trainer=ddp", "trainer.devices=1", *r.size)


def timm(r: Runner) -> None:
    """A timm architecture (random init, offline) trained in bf16 on the GPU."""
    r.trains("`ferlab train trainer=gpu model=timm model.name=efficientnet_b0` (bf16, 2 epochs)", "timm",
             "trainer=gpu", "trainer.precision=bf16-mixed", "model=timm", "model.name=efficientnet_b0",
             "trainer.max_epochs=2", *r.size)


def device_line(cpu: bool) -> str:
    import torch

    if cpu:
        return "CPU stand-ins (--cpu): checks the script, not the GPU paths"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"


def run(quick: bool, cpu: bool) -> str:
    """The checks in turn; results/gpu_paths.md rewritten after each. Named `run`, not `main`: `make bench`
    (benchmarks.run_all) runs what works on any machine, and this needs a GPU."""
    import torch

    if not cpu and not torch.cuda.is_available():
        sys.exit("benchmarks.gpu_paths: no CUDA GPU here (run it on a GPU machine; --cpu checks the script)")
    runner = Runner(Path(tempfile.mkdtemp(prefix="ferlab-gpu-")), quick, cpu)
    for check in (main_job, resume, ddp, timm):
        check(runner)
        markdown = "\n\n".join([
            f"### ferlab's GPU paths{' (--quick)' if quick else ''}: {device_line(cpu)}", machine(),
            table(["check", "exit", "wall s", "epochs", "best val/acc", "test/acc", "result"], runner.rows,
                  right=range(1, 6))])
        write("gpu_paths", markdown, quick or cpu)  # after each check: a run cut short keeps what it measured
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_paths", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the figures")
    parser.add_argument("--cpu", action="store_true", help="CPU stand-ins for the GPU options (no GPU here)")
    args = parser.parse_args()
    print(run(args.quick, args.cpu))
