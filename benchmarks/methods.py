"""What each training method (`train_method=`) costs per training step against plain training, same backbone.

One process times every method on the same fixed batches (ResNet-18 at 3x112x112, batch 32, 7 classes): a step is
the method's forward passes and losses (`Method.step`, SCN with relabeling on, EAC with erasing), backward and an
SGD step, as in `ferlab train`. The methods take turns in rounds (plain, eac, scn, dan, plain, ...) so a change of
machine load touches them alike; the figure is the median step time and its ratio to plain's in the same run.
Peak memory: on CUDA, `torch.cuda.max_memory_allocated` per method in this process; on a CPU, the peak resident
set of a fresh process per method over 3 steps after a warm-up step (the kernel's high-water mark, VmHWM, reset
after the warm-up), and its growth over the process's size once the network is built (what training adds:
activations, gradients, optimizer state). CPU timing uses one intra-op thread (a shared machine's cores).

    .venv/bin/python -m benchmarks.methods [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import REPO, cli, machine, table

METHODS = ("plain", "eac", "scn", "dan")
CLASSES = 7


class Rows:
    """The train split SCN's relabel table is built from (what `setup_fit` reads of a datamodule)."""

    def __init__(self, targets: Any) -> None:
        self.splits, self.train_kind, self.mix = {"train": (None, targets)}, "index", None


def setup(name: str, side: int, batch: int, device: str) -> tuple[Any, Any, Any, tuple]:
    """(method, its network, optimizer, the fixed batch) for `train_method=<name>` on resnet18."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ferlab.methods import method_for_target
    from ferlab.models import create_model

    torch.manual_seed(0)
    method = instantiate(OmegaConf.load(REPO / "conf" / "train_method" / f"{name}.yaml"))
    assert isinstance(method, method_for_target(name))
    net = method.wrap(create_model("resnet18", in_chans=3, num_classes=CLASSES)).to(device).train()
    method.to(device)
    generator = torch.Generator().manual_seed(1)  # the same batch for every method
    x = torch.randn(batch, 3, side, side, generator=generator).to(device)
    y = torch.randint(0, CLASSES, (batch,), generator=generator).to(device)
    method.setup_fit(Rows(y.cpu()))
    params = [*net.parameters(), *method.parameters()]
    return method, net, torch.optim.SGD(params, lr=1e-3, momentum=0.9), (x, y, torch.arange(batch, device=device))


def step(method: Any, net: Any, optimizer: Any, batch: tuple) -> None:
    """One training step: the method's forward and loss (relabeling on: epoch 100), backward, optimizer step."""
    import torch

    x, y, index = batch
    out = method.step(net, x, y, torch.nn.functional.cross_entropy, epoch=100, index=index)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(side: int, batch: int, rounds: int, steps: int, device: str) -> dict[str, list[float]]:
    """Seconds per step of every method, `steps` per turn, methods taking turns for `rounds` rounds."""
    built = {name: setup(name, side, batch, device) for name in METHODS}
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for name in METHODS:  # warm-up: oneDNN / cuDNN primitives, allocator
        step(*built[name])
    for _ in range(rounds):
        for name in METHODS:
            for _ in range(steps):
                sync(device)
                start = time.perf_counter()
                step(*built[name])
                sync(device)
                times[name].append(time.perf_counter() - start)
    return times


def cuda_peaks(side: int, batch: int) -> dict[str, float]:
    """MiB of torch.cuda.max_memory_allocated over 3 steps of each method, alone on the device."""
    import torch

    peaks = {}
    for name in METHODS:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        parts = setup(name, side, batch, "cuda")
        for _ in range(3):
            step(*parts)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        del parts
    return peaks


def _status_kib(field: str) -> int:
    """A /proc/self/status field in KiB (VmRSS: resident now, VmHWM: peak since the last reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def child(name: str, side: int, batch: int) -> None:
    """In a fresh process: resident size once the network is built (and one warm-up step done), then the peak over 3
    steps (the kernel's high-water mark, reset after the warm-up), as JSON on stdout (KiB)."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    parts = setup(name, side, batch, "cpu")
    built = _status_kib("VmRSS")
    step(*parts)  # optimizer state and allocator pools exist from here on
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (Linux >= 4.0)
    for _ in range(3):
        step(*parts)
    print(json.dumps({"built": built, "peak": _status_kib("VmHWM")}))


def cpu_peaks(side: int, batch: int) -> dict[str, tuple[float, float]]:
    """(peak RSS MiB while training, its growth over the built network MiB) of each method in a fresh process."""
    out = {}
    env = {**os.environ, "BENCH_THREADS": str(__import__("torch").get_num_threads())}
    for name in METHODS:
        code = f"from benchmarks.methods import child; child({name!r}, {side}, {batch})"
        run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
        kib = json.loads(run.stdout.strip().splitlines()[-1])
        out[name] = (kib["peak"] / 1024, (kib["peak"] - kib["built"]) / 1024)
    return out


def main(quick: bool = False) -> str:
    """Time the methods (and measure their memory); return the markdown."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # one thread: on a shared machine two oversubscribe and swamp the ratios with waiting
        torch.set_num_threads(1)
    side, batch, rounds, steps = (48, 4, 2, 1) if quick else (112, 32, 4, 3)
    load_before = os.getloadavg()
    times = time_steps(side, batch, rounds, steps, device)
    load_after = os.getloadavg()
    plain = statistics.median(times["plain"])
    if device == "cuda":
        memory = {n: (f"{v:,.0f}", "") for n, v in cuda_peaks(side, batch).items()}
        memory_headers = ["CUDA max allocated MiB"]
    else:
        memory = {n: (f"{p:,.0f}", f"{g:,.0f}") for n, (p, g) in cpu_peaks(side, batch).items()}
        memory_headers = ["peak RSS MiB (training)", "over the built network MiB"]
    rows = []
    for name in METHODS:
        median = statistics.median(times[name])
        spread = f"{min(times[name]) * 1e3:,.0f}-{max(times[name]) * 1e3:,.0f}"
        rows.append([f"`{name}`", f"{median * 1e3:,.0f}", spread, f"{median / plain:.2f}x",
                     *memory[name][: len(memory_headers)]])
    headers = ["train_method", "ms/step (median)", "min-max ms", "vs plain", *memory_headers]
    note = " (--quick: tiny sizes, checks the script only)" if quick else ""
    loads = f"load average {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end of the timing"
    return "\n\n".join([
        f"### Training step cost of each method: resnet18, 3x{side}x{side}, batch {batch}, {device}{note}",
        f"{machine()}; {loads}; {rounds} rounds x {steps} steps per method, methods in turn.",
        table(headers, rows, right=range(1, len(headers))),
    ])


if __name__ == "__main__":
    cli("methods", main, __doc__.splitlines()[0])
