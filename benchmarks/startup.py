"""How long `ferlab` takes to answer: `ferlab train --help`, `ferlab train --cfg job` (target <= 1.0 s each), and the
time from typing `ferlab train` to its first training step, with the data cached (warm) and from nothing (cold:
render the synthetic faces, decode, cache). Each is a fresh process, as a user runs it; medians.

    .venv/bin/python -m benchmarks.startup [--quick]
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback

from benchmarks.common import child_env, cli, data_root, machine, table

TARGET_S = 1.0
MARKER = "FERLAB_FIRST_TRAINING_STEP"
FERLAB = [sys.executable, "-m", "ferlab"]


class FirstStep(Callback):
    """Prints a marker line when the first training batch starts (the benchmark kills the run then)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            print(MARKER, flush=True)


def _wall(cmd: list[str], root: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=child_env(root), check=True, capture_output=True)
    return time.perf_counter() - start


def _to_first_step(root: Path, log_dir: Path, extra: list[str]) -> float:
    """Seconds from process start until the first training step begins; the process is killed then."""
    cmd = [*FERLAB, "train", "+callbacks.first_step._target_=benchmarks.startup.FirstStep",
           f"paths.log_dir={log_dir}", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=child_env(root), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    for line in proc.stdout:
        if MARKER in line:
            elapsed = time.perf_counter() - start
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return elapsed
    raise RuntimeError(f"`{' '.join(cmd)}` ended (status {proc.wait()}) before its first training step")


def main(quick: bool = False) -> str:
    """The start-up table as markdown."""
    repeats = 3 if quick else 10
    root = data_root()
    rows = []
    for label, cmd in [("`python -c pass` (interpreter alone)", [sys.executable, "-c", "pass"]),
                       ("`ferlab train --help`", [*FERLAB, "train", "--help"]),
                       ("`ferlab train --cfg job`", [*FERLAB, "train", "--cfg", "job"]),
                       ("`python -c 'import torch, pytorch_lightning'` (what training must load)",
                        [sys.executable, "-c", "import torch, pytorch_lightning"])]:
        times = [_wall(cmd, root) for _ in range(repeats)]
        target = "yes" if statistics.median(times) <= TARGET_S else "no"
        rows.append((label, f"{statistics.median(times):.2f}", f"{min(times):.2f}",
                     target if "ferlab" in label else ""))
    size = ["data.source.num_images=1000"] if quick else []
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-") as tmp:
        _to_first_step(root, Path(tmp), size)  # makes sure the warm case finds its cache
        warm = [_to_first_step(root, Path(tmp), size) for _ in range(max(1, repeats // 3))]
        cold_root = Path(tmp) / "cold"
        cold = []
        for _ in range(1 if quick else 2):
            shutil.rmtree(cold_root, ignore_errors=True)
            cold_root.mkdir()
            cold.append(_to_first_step(cold_root, Path(tmp), size))
    images = "1,000" if quick else "10,000"
    rows.append(("`ferlab train` to its first training step, data cached", f"{statistics.median(warm):.2f}",
                 f"{min(warm):.2f}", ""))
    rows.append((f"`ferlab train` to its first training step, cold: render {images} faces, decode, cache",
                 f"{statistics.median(cold):.2f}", f"{min(cold):.2f}", ""))
    return "\n".join([
        "### Start-up", "",
        f"Machine: {machine()}. Fresh process each time; median and best of {repeats} "
        f"(first-step rows: {len(warm)} warm, {len(cold)} cold). Default `ferlab train` config.", "",
        table(["command", "median s", "best s", f"<= {TARGET_S:.1f} s"], rows, right=(1, 2)),
    ])


if __name__ == "__main__":
    cli("startup", main, __doc__.splitlines()[0])
