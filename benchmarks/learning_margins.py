"""The learning tests' figures under every CPU kernel set and thread count this machine offers, against the
thresholds the tests assert: how far each figure stays from failing (issue 23: a test that checks that training
learns must pass on every correct float implementation, not only on the CPU it was written on).

Each setting is a fresh process (ATen, oneDNN and MKL choose their kernels at start-up): ATEN_CPU_CAPABILITY
default / avx2 / avx512 (those the CPU has), each with 1 and 2 intra-op threads, and a narrow setting that also
holds oneDNN to SSE4.1 and MKL to SSE4.2 (other convolution and matmul kernels, other summation orders).

    .venv/bin/python -m benchmarks.learning_margins [--quick]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, cli, machine, table

NARROW = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
LADDER = ["default", "avx2", "avx512"]  # x86-64 ATen capabilities, lowest first


def settings(quick: bool) -> list[tuple[str, dict[str, str], int]]:
    """(label, environment, threads) of each child process: the ATen capabilities up to this CPU's, then NARROW."""
    import torch

    native = torch.backends.cpu.get_cpu_capability().lower()
    caps = LADDER[: LADDER.index(native) + 1] if native in LADDER else ["default", native]
    envs = [(f"ATen {c}", {"ATEN_CPU_CAPABILITY": c}) for c in caps] + [("ATen default, oneDNN SSE4.1, MKL SSE4.2",
                                                                          NARROW)]
    threads = (1,) if quick else (1, 2)
    return [(label, env, n) for label, env in envs for n in threads]


def _models(quick: bool) -> dict[str, float]:
    """tests/test_models.py's float checks, as margins (> 1 passes): the one-SGD-step loss drop relative to the
    loss, eval-vs-frozen-train closeness and the train/eval gap against the tolerances the tests use."""
    import torch

    from ferlab.models import list_models
    from tests.test_models import eval_pass, explains_train_eval_gap, freeze_stochastic, setup, train_loss

    drops, close, gap_present, gap_absent = [], [], [], []
    for name in list_models():
        net, x, y, cam = setup(name, "gray48")
        logits = eval_pass(net, x, cam)
        with torch.no_grad():
            frozen = freeze_stochastic(net)(x)
        close.append(float(((frozen - logits).abs() / (1e-5 + 1.3e-6 * logits.abs())).max()))
        train_logits, loss = train_loss(net.train(), x, y)
        loss.backward()
        gap = float(((train_logits.detach() - logits).abs() / (1e-5 + 1e-4 * logits.abs())).max())
        (gap_present if explains_train_eval_gap(net) else gap_absent).append(gap)
        torch.optim.SGD(net.parameters(), lr=0.01).step()
        with torch.no_grad():
            drops.append(float((loss - train_loss(net, x, y)[1]) / loss))
    out = {"sgd_step_min_relative_drop": min(drops), "gray48_eval_vs_frozen_worst": max(close),
           "gap_with_bn_dropout_min": min(gap_present), "gap_without_max": max(gap_absent, default=0.0)}
    if not quick:
        worst = 0.0
        for name in list_models():
            net, x, y, cam = setup(name, "rgb224")
            logits = eval_pass(net, x, cam)
            frozen, _ = train_loss(freeze_stochastic(net), x, y)
            worst = max(worst, float(((frozen.detach() - logits).abs() / (1e-5 + 1.3e-6 * logits.abs())).max()))
        out["rgb224_eval_vs_frozen_worst"] = worst
    return out


def child(quick: bool) -> dict[str, float]:
    """Every learning test's figure, in this process (its kernels and thread count)."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.tasks.train import run_train
    from tests.conftest import FAST, compose_cfg
    from tests.test_experiments import OVERFIT_RUN
    from tests.test_synthetic import linear_accuracy, tiny_cnn_accuracy
    from tests.test_train import MEMORISE

    torch.set_num_threads(int(os.environ["LEARNING_MARGINS_THREADS"]))
    out: dict[str, float] = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    out["cnn_acc"], out["cnn_majority"] = tiny_cnn_accuracy()
    out["linear_acc"] = linear_accuracy()
    with tempfile.TemporaryDirectory() as tmp:
        for key, overrides in (("memorise", MEMORISE), ("overfit", OVERFIT_RUN)):
            history = run_train(compose_cfg(Path(tmp) / key, [*FAST, *overrides]))["history"]
            GlobalHydra.instance().clear()
            out[f"{key}_loss_ratio"] = history[-1]["train/loss"] / history[0]["train/loss"]
            out[f"{key}_first_acc"], out[f"{key}_last_acc"] = history[0]["train/acc"], history[-1]["train/acc"]
    return {**out, **_models(quick)}


def _run_child(env: dict[str, str], threads: int, quick: bool) -> dict:
    path = os.pathsep.join([str(REPO), str(REPO / "src")])  # tests.*, and this checkout's ferlab
    full = {**os.environ, **env, "LEARNING_MARGINS_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": path}
    full.pop("FERLAB_RUN_ID", None)
    args = [sys.executable, "-m", "benchmarks.learning_margins", "--child", *(["--quick"] if quick else [])]
    r = subprocess.run(args, cwd=REPO, env=full, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"child {env} x{threads} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# figure -> (test, what it asserts, margin: how many times over the threshold the figure passes; > 1 passes)
CHECKS = {
    "cnn_acc": ("test_synthetic: tiny CNN test accuracy", "> 0.8", lambda v: (v - 0.0) / 0.8),
    "linear_acc": ("test_synthetic: linear classifier accuracy", "< 0.6", lambda v: 0.6 / v),
    "memorise_loss_ratio": ("test_train: memorise 64 faces, last/first loss", "< 0.05", lambda v: 0.05 / v),
    "memorise_last_acc": ("test_train: memorise 64 faces, last train/acc", "== 1.0", lambda v: 1.0 if v == 1 else 0.0),
    "memorise_first_acc": ("test_train: memorise 64 faces, first train/acc", "< 0.5", lambda v: 0.5 / max(v, 1e-9)),
    "overfit_loss_ratio": ("test_experiments: debug=overfit, last/first loss", "< 0.25", lambda v: 0.25 / v),
    "sgd_step_min_relative_drop": ("test_models gray48: one SGD step, smallest loss drop / loss", "> 0",
                                   lambda v: v / 1.2e-7),  # in float32 ulps of the loss
    "gray48_eval_vs_frozen_worst": ("test_models gray48: eval vs frozen train, worst diff / tolerance", "<= 1",
                                    lambda v: 1 / max(v, 1e-9)),
    "rgb224_eval_vs_frozen_worst": ("test_models rgb224: eval vs frozen train, worst diff / tolerance", "<= 1",
                                    lambda v: 1 / max(v, 1e-9)),
    "gap_with_bn_dropout_min": ("test_models gray48: train/eval gap with BN or dropout, smallest / tolerance", "> 1",
                                lambda v: v),
    "gap_without_max": ("test_models gray48: train/eval gap without them, largest / tolerance", "<= 1",
                        lambda v: 1 / max(v, 1e-9)),
}


def _fmt(v: float) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _native() -> str:
    """This CPU's own ATen capability (what torch picks with no ATEN_CPU_CAPABILITY) and its x86 vector flags."""
    import torch

    flags = set()
    if Path("/proc/cpuinfo").exists():
        line = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        flags = {f for f in line.split() if f.startswith(("avx", "fma", "sse4", "amx"))}
    name = platform.processor() or platform.machine()
    return f"{torch.backends.cpu.get_cpu_capability()} ({name}; flags: {' '.join(sorted(flags)) or 'n/a'})"


def main(quick: bool = False) -> str:
    """Run every setting, then the table: each figure's range over the settings and its worst margin."""
    rows, results = [], []
    for label, env, threads in settings(quick):
        results.append((label, threads, _run_child(env, threads, quick)))
    for key, (test, asserted, margin) in CHECKS.items():
        values = [r[key] for _, _, r in results if key in r]
        if values:
            rows.append([test, asserted, _fmt(min(values)), _fmt(max(values)), _fmt(min(map(margin, values)))])
    detail_keys = ["cnn_acc", "cnn_majority", "linear_acc", "memorise_loss_ratio", "memorise_last_acc",
                   "overfit_loss_ratio", "sgd_step_min_relative_drop", "gray48_eval_vs_frozen_worst"]
    detail = [[label, threads, *(_fmt(r.get(k, "")) for k in detail_keys)] for label, threads, r in results]
    return "\n\n".join([
        "# Learning tests under every CPU kernel set",
        f"Machine: {machine()}; native ATen capability of this CPU: {_native()}, the highest setting below "
        f"(a capability the CPU lacks cannot be run here). {len(results)} settings, each a fresh process with "
        "OMP_NUM_THREADS and torch's intra-op threads set to the thread count.",
        "Margin: how many times the worst setting's figure clears the threshold (the ratio, or for accuracy "
        "figure / threshold); the SGD-step drop is counted in float32 ulps of the loss. Every margin > 1 passes.",
        table(["test", "asserts", "min", "max", "worst margin"], rows, right=(2, 3, 4)),
        "## Each setting",
        table(["setting", "threads", *detail_keys], detail, right=tuple(range(1, 2 + len(detail_keys)))),
    ])


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(json.dumps(child("--quick" in sys.argv)))
    else:
        cli("learning_margins", main, __doc__.splitlines()[0])
