"""The model zoo side by side: parameters, MACs at 48x48, CPU training and inference throughput at batch 64.

Every registered model is built from its conf/model YAML for FER2013's shape (1x48x48, 7 classes) and timed
on random batches of 64 in fp32 and in bf16 autocast with channels_last tensors. Throughput is images/s over
timed iterations after a warm-up (a training iteration = forward, loss, backward, SGD step); ratios are
against fp32 of the same model and against the reference model (the default `resnet18_small`, fp32) in the
same run, which is what survives a change of machine. MACs count convolutions and matrix products
(torch.utils.flop_counter; FLOPs / 2), not normalization, pooling or grid sampling.

    .venv/bin/python -m benchmarks.models [--quick]
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from benchmarks.common import cli, machine, table

REFERENCE = "resnet18_small"
QUICK_MODELS = (REFERENCE, "resnext18_fer", "deep_emotion", "cliquenet", "lenet7")
BATCH, SIDE, CHANNELS, CLASSES = 64, 48, 1, 7


def build(name: str) -> Any:
    """The model as `ferlab train model=<name>` builds it for FER2013-shaped data."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ferlab.runner import CONF_DIR

    data = {"in_chans": CHANNELS, "num_classes": CLASSES, "image_size": SIDE}
    node = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    torch.manual_seed(0)
    return instantiate(OmegaConf.create({"data": data, "model": node}).model)


def count_macs(net: Any) -> int:
    """Multiply-accumulates of one 1x48x48 image through the net in eval mode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net.eval()(torch.randn(1, CHANNELS, SIDE, SIDE))
    return counter.get_total_flops() // 2


def throughput(net: Any, train: bool, fast: bool, min_time: float, max_iters: int) -> float:
    """Images/s of training steps (or inference batches); `fast`: bf16 autocast + channels_last."""
    import torch

    fmt = torch.channels_last if fast else torch.contiguous_format
    net = net.to(memory_format=fmt).train(train)
    x = torch.randn(BATCH, CHANNELS, SIDE, SIDE).contiguous(memory_format=fmt)
    y = torch.randint(0, CLASSES, (BATCH,))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if fast else nullcontext()

    def step() -> None:
        if train:
            with autocast:
                loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast:
                net(x)

    step()  # warm-up: oneDNN primitive creation, allocator
    iters, start = 0, time.perf_counter()
    while iters < max_iters and (iters == 0 or time.perf_counter() - start < min_time):
        step()
        iters += 1
    return iters * BATCH / (time.perf_counter() - start)


def measure(name: str, min_time: float, max_iters: int) -> dict[str, Any]:
    """One row: parameters, MACs and the four throughputs of a model."""
    net = build(name)
    row = {"name": name, "params": sum(p.numel() for p in net.parameters()), "macs": count_macs(net)}
    for mode in ("train", "infer"):
        for fast in (False, True):
            row[(mode, fast)] = throughput(net, mode == "train", fast, min_time, max_iters)
    return row


def to_markdown(rows: list[dict[str, Any]], quick: bool) -> str:
    """The table, with bf16 speed-ups and training throughput relative to the reference model."""
    ref = next(r for r in rows if r["name"] == REFERENCE)[("train", False)]
    headers = ["model", "params", "MMACs @48", "train img/s fp32", "train img/s bf16+CL", "infer img/s fp32",
               "infer img/s bf16+CL", f"train vs {REFERENCE}"]
    body = []
    for r in rows:
        cells = [f"`{r['name']}`", f"{r['params'] / 1e6:.2f} M", f"{r['macs'] / 1e6:,.1f}"]
        for mode in ("train", "infer"):
            base, fast = r[(mode, False)], r[(mode, True)]
            cells += [f"{base:,.0f}", f"{fast:,.0f} ({fast / base:.2f}x)"]
        body.append([*cells, f"{r[('train', False)] / ref:.2f}x"])
    note = " (--quick: subset, short timing)" if quick else ""
    title = f"### Model zoo: 1x48x48 input, 7 classes, batch {BATCH}, CPU{note}"
    return "\n\n".join([title, machine(), table(headers, body, right=range(1, len(headers)))])


def main(quick: bool = False) -> str:
    """Measure every registered model (a small subset with --quick) and return the markdown table."""
    from ferlab.models import list_models

    names = QUICK_MODELS if quick else list_models()
    min_time, max_iters = (0.2, 2) if quick else (3.0, 20)
    rows = [measure(name, min_time, max_iters) for name in names]
    return to_markdown(rows, quick)


if __name__ == "__main__":
    cli("models", main, __doc__.splitlines()[0])
