"""The model zoo side by side: parameters, MACs, CPU training and inference throughput.

Table 1: every registered model built from its conf/model YAML for FER2013's shape (1x48x48, 7 classes), with
`model=timm` as `model.name=efficientnet_b0` and `convnext_nano`, on random batches of 64. Table 2:
ImageNet-pretrainable backbones at their own input size (3 channels; the side of timm's pretrained_cfg, 224 for
torchvision's resnet18), batch 16: what fine-tuning them costs on a CPU.

Each model is timed in fp32 and in bf16 autocast with channels_last tensors. Throughput is images/s over timed
iterations after a warm-up (a training iteration = forward, loss, backward, SGD step); ratios are against fp32 of
the same model and against the table's reference model (fp32) in the same run, which is what survives a change
of machine. MACs count convolutions and matrix products (torch.utils.flop_counter; FLOPs / 2), not
normalization, pooling or grid sampling.

    .venv/bin/python -m benchmarks.models [--quick]
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import cli, machine, table

CLASSES = 7


@dataclass(frozen=True)
class Case:
    """One row: a conf/model option, overrides of its keys, and the input it is measured on."""

    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    chans: int = 1
    side: int = 48
    batch: int = 64

    @property
    def label(self) -> str:
        name = self.overrides.get("name")
        return f"{self.model} {name}" if name else self.model


REFERENCE = Case("resnet18_small")
QUICK_MODELS = ("resnet18_small", "resnext18_fer", "deep_emotion", "cliquenet", "lenet7")
TIMM_NAMES = ("efficientnet_b0", "convnext_nano")  # model=timm rows, in both tables


def build(case: Case) -> Any:
    """The model as `ferlab train model=<model> model.<key>=<value>...` builds it for the case's input."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ferlab.config.runner import CONF_DIR

    data = {"in_chans": case.chans, "num_classes": CLASSES, "image_size": case.side}
    node = OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "model" / f"{case.model}.yaml"), case.overrides)
    torch.manual_seed(0)
    return instantiate(OmegaConf.create({"data": data, "model": node}).model)


def count_macs(net: Any, case: Case) -> int:
    """Multiply-accumulates of one image through the net in eval mode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net.eval()(torch.randn(1, case.chans, case.side, case.side))
    return counter.get_total_flops() // 2


def throughput(net: Any, case: Case, train: bool, fast: bool, min_time: float, max_iters: int) -> float:
    """Images/s of training steps (or inference batches); `fast`: bf16 autocast + channels_last."""
    import torch

    fmt = torch.channels_last if fast else torch.contiguous_format
    net = net.to(memory_format=fmt).train(train)
    x = torch.randn(case.batch, case.chans, case.side, case.side).contiguous(memory_format=fmt)
    y = torch.randint(0, CLASSES, (case.batch,))
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
    return iters * case.batch / (time.perf_counter() - start)


def measure(case: Case, min_time: float, max_iters: int) -> dict[str, Any]:
    """One row: parameters, MACs and the four throughputs of a model."""
    net = build(case)
    row = {"case": case, "params": sum(p.numel() for p in net.parameters()), "macs": count_macs(net, case)}
    for mode in ("train", "infer"):
        for fast in (False, True):
            row[(mode, fast)] = throughput(net, case, mode == "train", fast, min_time, max_iters)
    return row


def to_markdown(rows: list[dict[str, Any]], reference: Case) -> str:
    """A table with bf16 speed-ups and training throughput relative to the reference row."""
    ref = next(r for r in rows if r["case"] == reference)[("train", False)]
    headers = ["model", "input", "params", "MMACs", "train img/s fp32", "train img/s bf16+CL", "infer img/s fp32",
               "infer img/s bf16+CL", f"train vs {reference.label}"]
    body = []
    for r in rows:
        case = r["case"]
        cells = [f"`{case.label}`", f"{case.chans}x{case.side}", f"{r['params'] / 1e6:.2f} M", f"{r['macs'] / 1e6:,.1f}"]
        for mode in ("train", "infer"):
            base, fast = r[(mode, False)], r[(mode, True)]
            cells += [f"{base:,.0f}", f"{fast:,.0f} ({fast / base:.2f}x)"]
        body.append([*cells, f"{r[('train', False)] / ref:.2f}x"])
    return table(headers, body, right=range(2, len(headers)))


def backbone_cases(quick: bool) -> list[Case]:
    """resnet18 and the timm backbones at their pretrained input size (3 channels), batch 16; --quick checks
    the same rows at 64x64, batch 2."""
    from ferlab.models.timm_net import _timm

    timm, batch = _timm(), 2 if quick else 16
    sides = {name: 64 if quick else timm.models.get_pretrained_cfg(name).input_size[-1] for name in TIMM_NAMES}
    cases = [Case("resnet18", chans=3, side=64 if quick else 224, batch=batch)]
    return cases + [Case("timm", {"name": name}, chans=3, side=sides[name], batch=batch) for name in TIMM_NAMES]


def main(quick: bool = False) -> str:
    """Measure the zoo (a small subset with --quick) and the pretrainable backbones; return the markdown."""
    from ferlab.models import list_models

    names = QUICK_MODELS if quick else list_models()
    min_time, max_iters = (0.2, 2) if quick else (3.0, 20)
    zoo = [Case(n) for n in names if n != "timm"] + [Case("timm", {"name": n}) for n in TIMM_NAMES]
    note = " (--quick: subset, short timing)" if quick else ""
    first = to_markdown([measure(case, min_time, max_iters) for case in zoo], REFERENCE)
    backbones = backbone_cases(quick)
    second = to_markdown([measure(case, min_time, max_iters) for case in backbones], backbones[0])
    return "\n\n".join([f"### Model zoo: 1x48x48 input, {CLASSES} classes, batch 64, CPU{note}", machine(), first,
                          f"### Pretrainable backbones at their own input size, {CLASSES} classes, batch "
                          f"{backbones[0].batch}, CPU{note}", second])


if __name__ == "__main__":
    cli("models", main, __doc__.splitlines()[0])
