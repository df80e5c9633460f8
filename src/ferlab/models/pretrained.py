"""Weights from elsewhere: torchvision's ImageNet weights, state-dict files and other runs, loaded and reported.

Loading is separate from building (as torchvision's weights API and timm's `_builder`/`_manipulate`): a builder
makes the network, then `load_pretrained(net, pretrained, ...)` fetches a state dict (torchvision's
IMAGENET1K_V1 entry through its weights API and the torch hub cache, or a .pth/.pt/.safetensors file), renames
torchvision's keys to ferlab's modules and calls `load_weights`, which `init_from` uses too.

`load_weights`, per top-level module of the network:
- a tensor whose name and shape match is copied;
- a conv weight that differs only in input channels is adapted by timm's `adapt_input_conv` rule (1 channel:
  the sum of the source kernels, so a gray image gives what the RGB net gives on it copied to 3 channels;
  n channels: the kernels repeated and scaled by source channels / n);
- `stem`, `mlp` (a VGG's hidden classifier layers), `fusion` and `head` keep their own initialisation as a whole
  when one of their tensors has another shape or is not in the source (the head when num_classes differs, the
  stem with stem=small); source tensors of these modules that the network lacks are dropped;
- anything else missing, unexpected or of another shape means the weights belong to another network: one
  FerlabError naming the first mismatched keys (batch norm's `num_batches_tracked` counters, absent from files
  older than PyTorch 0.4.1 such as torchvision's VGG weights, are not needed and not counted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError

log = logging.getLogger(__name__)

# top-level modules that may keep their own initialisation (shapes differ, or the source has none)
OPTIONAL = {"stem": "stem", "mlp": "classifier layers", "fusion": "feature fusion", "head": "head"}
SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")  # .bin: torch.save files as on the Hugging Face hub

# torchvision prefix -> ferlab prefix, applied once per key (first match); keys already in ferlab's names pass
Renames = Callable[[nn.Module], list[tuple[str, str]]]


@dataclass
class LoadReport:
    """What a load did: `loaded` of `total` tensors copied, `adapted` input convs, `skipped` modules (-> why)."""

    source: str
    loaded: int = 0
    total: int = 0
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{self.source}: loaded {self.loaded}/{self.total} tensors", *self.adapted]
        parts += [f"{module} re-initialised ({why})" for module, why in self.skipped.items()]
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """timm's rule for a first conv of another channel count: (O, I, k, k) -> (O, in_chans, k, k)."""
    source = weight.shape[1]
    if in_chans == 1:
        return weight.float().sum(1, keepdim=True).to(weight.dtype)
    repeated = weight.float().repeat(1, math.ceil(in_chans / source), 1, 1)[:, :in_chans]
    return (repeated * (source / in_chans)).to(weight.dtype)


def _channels_only(source: Tensor, target: Tensor) -> bool:
    """A conv weight that differs from the network's only in its input channels."""
    return (source.ndim == target.ndim == 4 and source.shape[0] == target.shape[0]
            and source.shape[2:] == target.shape[2:] and source.shape[1] != target.shape[1])


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_weights(net: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> LoadReport:
    """Copy `state_dict` (ferlab names) into `net` by the rules above; returns the report, logged."""
    target = net.state_dict()
    report = LoadReport(source=source, total=len(target))
    copied: dict[str, Tensor] = {}
    problems: dict[str, list[str]] = {}  # top-level module -> mismatches
    for key, mine in target.items():
        theirs = state_dict.get(key)
        if theirs is None and key.endswith(".num_batches_tracked"):  # files from before PyTorch 0.4.1 lack it
            report.total -= 1
        elif theirs is None:
            problems.setdefault(key.split(".")[0], []).append(f"{key} not in the source")
        elif theirs.shape == mine.shape:
            copied[key] = theirs
        elif _channels_only(theirs, mine):
            copied[key] = adapt_input_conv(theirs, mine.shape[1])
            report.adapted.append(f"{key} adapted from {theirs.shape[1]} to {mine.shape[1]} input channels")
        else:
            problems.setdefault(key.split(".")[0], []).append(f"{key} is {_shape(mine)}, {_shape(theirs)} in the source")
    for key in state_dict:
        if key not in target:
            problems.setdefault(key.split(".")[0], []).append(f"source tensor {key} has no place here")
    for module in [m for m in problems if m in OPTIONAL]:
        report.skipped[module] = problems.pop(module)[0]
        copied = {k: v for k, v in copied.items() if k.split(".")[0] != module}
        report.adapted = [a for a in report.adapted if a.split(".")[0] != module]
    if problems or not copied:
        first = [p for found in problems.values() for p in found]
        more = f" (+{len(first) - 3} more)" if len(first) > 3 else ""
        raise FerlabError(f"{source} does not fit {type(net).__name__}: {'; '.join(first[:3]) or 'no tensor in common'}"
                          f"{more}")
    net.load_state_dict(copied, strict=False)  # skipped modules keep the builder's initialisation
    report.loaded = len(copied)
    log.info("weights %s", report.summary())
    return report


def read_state_dict(path: str | Path, key: str = "model.pretrained") -> dict[str, Tensor]:
    """A state dict from a .pth/.pt/.bin (torch.save, weights only; {"state_dict": ...} unwrapped) or .safetensors file."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise FerlabError(f"{key}={path}: expected imagenet, null or a {', '.join(SUFFIXES)} file")
    if not path.is_file():
        raise FerlabError(f"{key}={path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or pickled objects: torch and safetensors raise many types
        raise FerlabError(f"{key}={path} cannot be read as weights: {str(e).strip().splitlines()[0]}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not data or not all(isinstance(v, Tensor) for v in data.values()):
        raise FerlabError(f"{key}={path} is not a state dict (a mapping of names to tensors)")
    return data


def imagenet_state_dict(weights: str) -> dict[str, Tensor]:
    """torchvision's published weights (e.g. "ResNet18_Weights.IMAGENET1K_V1") via its weights API and hub cache."""
    from urllib.parse import urlparse

    from torchvision.models import get_weight

    entry = get_weight(weights)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    name = Path(urlparse(entry.url).path).name
    cached = (folder / name).is_file()
    try:
        return entry.get_state_dict(progress=True, weights_only=True)
    except Exception as e:  # URLError offline, HTTP errors, a truncated cache file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if cached:
            raise FerlabError(f"model.pretrained=imagenet: cached {folder / name} cannot be read ({reason}); "
                              f"delete it and download {entry.url} again") from None
        raise FerlabError(f"model.pretrained=imagenet: {name} is not in {folder}/ ($TORCH_HOME/hub/checkpoints/) "
                          f"and cannot be downloaded ({reason}); put {entry.url} there as {name}") from None


def rename(state_dict: Mapping[str, Tensor], pairs: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Keys with the first matching (old prefix, new prefix) of `pairs` replaced; other keys unchanged."""
    out = {}
    for key, value in state_dict.items():
        old, new = next(((o, n) for o, n in pairs if key.startswith(o)), ("", ""))
        out[new + key[len(old):]] = value
    return out


def resnet_names(net: nn.Module) -> list[tuple[str, str]]:
    """torchvision ResNet/ResNeXt: conv1/bn1 -> the stem, layer<i> -> stages.<i-1>, fc -> head."""
    stages = [(f"layer{i + 1}.", f"stages.{i}.") for i in range(len(net.stages))]
    return [("conv1.", "stem.0."), ("bn1.", "stem.1."), *stages, ("fc.", "head.")]


def vgg_names(net: nn.Module) -> list[tuple[str, str]]:
    """torchvision VGG: features.<i> (conv[, bn], relu per conv, a pool per stage) -> stages.<s>.convs.<j>,
    classifier.0/3 -> mlp.0/3, classifier.6 -> head. Indices follow this net's stages and norm."""
    pairs, i = [], 0
    for s, stage in enumerate(net.stages):
        convs = list(stage.convs)
        for j, module in enumerate(convs):
            if isinstance(module, nn.Conv2d):
                pairs.append((f"features.{i}.", f"stages.{s}.convs.{j}."))
                norm = convs[j + 1]
                i += 1
                if isinstance(norm, nn.BatchNorm2d):
                    pairs.append((f"features.{i}.", f"stages.{s}.convs.{j + 1}."))
                    i += 1
                i += 1  # the activation
        i += 1  # the stage's max pool
    return [*pairs, ("classifier.0.", "mlp.0."), ("classifier.3.", "mlp.3."), ("classifier.6.", "head.")]


def load_pretrained(net: nn.Module, pretrained: str | None, *, imagenet: str | None = None,
                    names: Renames | None = None) -> nn.Module:
    """`pretrained`: None (keep the init), "imagenet" (the torchvision weights entry `imagenet`) or a file.

    `names` maps torchvision's keys to this family's modules; the load report is kept as `net.load_report`.
    """
    if pretrained is None:
        return net
    if not isinstance(pretrained, (str, Path)) or not str(pretrained).strip():
        raise FerlabError(f"model.pretrained={pretrained!r}: expected null, imagenet or a weight file")
    if str(pretrained) == "imagenet":
        if imagenet is None:
            raise FerlabError(f"model.pretrained=imagenet: torchvision has no ImageNet weights for {type(net).__name__} "
                              "of this layout (resnet18, resnet34, resnext50_32x4d, vgg11..vgg19[_bn] do)")
        state, source = imagenet_state_dict(imagenet), f"imagenet ({imagenet})"
    else:
        state, source = read_state_dict(pretrained), str(pretrained)
    net.load_report = load_weights(net, rename(state, names(net)) if names else state, source)
    return net
