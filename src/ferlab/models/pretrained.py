"""Weights from elsewhere: torchvision's ImageNet weights, state-dict files and other runs, loaded and reported.

Loading is separate from building (as torchvision's weights API and timm's `_builder`/`_manipulate`): a builder
makes the network, then `load_pretrained(net, pretrained, ...)` fetches a state dict (torchvision's
IMAGENET1K_V1 entry through its weights API and the torch hub cache, or a .pth/.pt/.bin/.tar/.safetensors file),
renames the file's keys (torchvision's, or a face-recognition layout's: models.face_weights) to ferlab's modules
and calls `load_weights`, which `init_from` uses too.

`load_weights`, per top-level module of the network:
- a tensor whose name and shape match is copied;
- a conv weight that differs only in input channels is adapted by timm's `adapt_input_conv` rule (1 channel:
  the sum of the source kernels, so a gray image gives what the RGB net gives on it copied to 3 channels;
  n channels: the kernels repeated and scaled by source channels / n);
- `stem`, `mlp` (a VGG's hidden classifier layers), `fusion` and `head` keep their own initialisation as a whole
  when one of their tensors has another shape or is not in the source (the head when num_classes differs, the
  stem with stem=small); source tensors of these modules that the network lacks are dropped;
- source tensors of an optional module this network does not have (a face-recognition `neck` with
  neck=avg) and those a family's renames mark unused (deeper stages than the network has) are `dropped`;
- anything else missing, unexpected or of another shape means the weights belong to another network: one
  FerlabError naming the file, the first mismatched keys and their shapes (batch norm's `num_batches_tracked`
  counters, absent from files older than PyTorch 0.4.1 such as torchvision's VGG weights, are not needed and not
  counted).

`read_state_dict` takes the files as the papers publish them: the weights may sit under `state_dict`,
`model_state_dict`, `model` or `net`, and every key may carry `module.` (DataParallel/DDP) or `_orig_mod.`
(torch.compile); a whole pickled model is refused in one line that says how to convert it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError

log = logging.getLogger(__name__)

# top-level modules that may keep their own initialisation (shapes differ, or the source has none)
OPTIONAL = {"stem": "stem", "mlp": "classifier layers", "fusion": "feature fusion", "neck": "embedding neck",
            "head": "head"}
SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".tar")  # .bin: torch.save files as on the Hugging Face hub;
# .tar: torch.save checkpoints named .pth.tar (POSTER's mobilefacenet_model_best.pth.tar, EfficientFace)
WRAPPERS = ("state_dict", "model_state_dict", "model", "net")  # checkpoint keys that hold the weights
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrap every key in these

# source prefix -> ferlab prefix, applied once per key (first match); keys already in ferlab's names pass.
# A None target drops the source tensors under that prefix (reported as `dropped`).
Renames = Callable[[nn.Module], list[tuple[str, str | None]]]


@dataclass
class LoadReport:
    """What a load did: `loaded` of `total` tensors copied, `adapted` input convs, `skipped` modules (-> why,
    kept at the builder's init), `dropped` source tensors this network has no place for (prefix -> why)."""

    source: str
    loaded: int = 0
    total: int = 0
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{self.source}: loaded {self.loaded}/{self.total} tensors", *self.adapted]
        parts += [f"{module} re-initialised ({why})" for module, why in self.skipped.items()]
        parts += [f"source {prefix} dropped ({why})" for prefix, why in self.dropped.items()]
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


def shape_of(t: Tensor) -> str:
    """'64x3x7x7' ('scalar' for a 0-d tensor), as the load reports and misfit lines write shapes."""
    return "x".join(map(str, t.shape)) or "scalar"


def _compare(target: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], named: Callable[[str], str],
             report: LoadReport) -> tuple[dict[str, Tensor], list[tuple[str, str]]]:
    """(tensors to copy, (top-level module, mismatch) pairs); input convs adapted and counters settled in `report`.
    Mismatches come in the network's order, then the file's tensors that have no place, in the file's order."""
    copied: dict[str, Tensor] = {}
    problems: list[tuple[str, str]] = []
    for key, mine in target.items():
        theirs = state_dict.get(key)
        if theirs is None and key.endswith(".num_batches_tracked"):  # files from before PyTorch 0.4.1 lack it
            report.total -= 1
        elif theirs is None:
            problems.append((key.split(".")[0], f"{key} ({shape_of(mine)}) not in the source"))
        elif theirs.shape == mine.shape:
            copied[key] = theirs
        elif _channels_only(theirs, mine):
            copied[key] = adapt_input_conv(theirs, mine.shape[1])
            report.adapted.append(f"{key} adapted from {theirs.shape[1]} to {mine.shape[1]} input channels")
        else:
            as_named = f" (as {named(key)})" if named(key) != key else ""
            problems.append((key.split(".")[0], f"{key} is {shape_of(mine)}, {shape_of(theirs)} in the source{as_named}"))
    problems += [(key.split(".")[0], f"source tensor {named(key)} ({shape_of(theirs)}) has no place here")
                 for key, theirs in state_dict.items() if key not in target]
    return copied, problems


def load_weights(net: nn.Module, state_dict: Mapping[str, Tensor], source: str,
                 origin: Mapping[str, str] | None = None, dropped: Mapping[str, str] | None = None) -> LoadReport:
    """Copy `state_dict` (ferlab names) into `net` by the rules above; returns the report, logged.
    `origin`: ferlab name -> the name in the file, so a misfit line names the file's keys; `dropped`: source
    prefixes left out before the load (-> why), for the report."""
    target = net.state_dict()
    report = LoadReport(source=source, total=len(target), dropped=dict(dropped or {}))
    def named(key: str) -> str:
        return (origin or {}).get(key, key)

    copied, problems = _compare(target, state_dict, named, report)
    modules = {k.split(".")[0] for k in target}
    for module in dict.fromkeys(m for m, _ in problems if m in OPTIONAL):
        found = [text for m, text in problems if m == module]
        problems = [(m, text) for m, text in problems if m != module]
        if module not in modules:  # e.g. a face-recognition neck the network was built without
            theirs = dict.fromkeys(named(k).split(".")[0] for k in state_dict if k.split(".")[0] == module)
            report.dropped[", ".join(theirs)] = f"{len(found)} tensors, no {OPTIONAL[module]} in this network"
            continue
        report.skipped[module] = found[0]
        copied = {k: v for k, v in copied.items() if k.split(".")[0] != module}
        report.adapted = [a for a in report.adapted if a.split(".")[0] != module]
    if problems or not copied:
        found = misfit([text for _, text in problems]) or "no tensor in common"
        raise FerlabError(f"{source} does not fit {type(net).__name__}: {found}{_layout_hint(state_dict, net)}")
    net.load_state_dict(copied, strict=False)  # skipped modules keep the builder's initialisation
    report.loaded = len(copied)
    log.info("weights %s", report.summary())
    return report


def misfit(found: list[str], shown: int = 3) -> str:
    """`shown` of the mismatches, the first missing, unexpected and reshaped key first, then '(+N more)'."""
    def kind(text: str) -> str:
        return "missing" if text.endswith(("not in the source", "not in the file")) else (
            "unexpected" if text.endswith("has no place here") else "shape")

    firsts: dict[str, str] = {}
    for text in found:
        firsts.setdefault(kind(text), text)
    picked = list(firsts.values())[:shown]
    picked += [t for t in found if t not in picked][: shown - len(picked)]
    more = f" (+{len(found) - len(picked)} more)" if len(found) > len(picked) else ""
    return "; ".join(picked) + more


# key prefixes that identify a published layout -> the model that reads it (named in a misfit line)
LAYOUTS = {"input_layer.": ("IRNet", "model=ir50 (insightface IR layout)"),
           "conv_6_sep.": ("MobileFaceNet", "model=mobilefacenet (InsightFace_Pytorch layout)"),
           "layer1.": ("ResNet", "model=resnet18 or resnet34 (torchvision ResNet layout)"),
           "features.0.": ("VGG", "a torchvision VGG model (vgg11 ... vgg19_bn)")}


def _layout_hint(state_dict: Mapping[str, Tensor], net: nn.Module) -> str:
    """'; the file looks like ...' when the source's keys are a layout another ferlab model reads, or the net's
    own hint (`misfit_hint(state_dict)`, e.g. IRNet: how many stages the file has)."""
    own = getattr(net, "misfit_hint", None)
    if own is not None and own(state_dict):
        return f"; {own(state_dict)}"
    for prefix, (cls, model) in LAYOUTS.items():
        if any(k.startswith(prefix) for k in state_dict) and type(net).__name__ != cls:
            return f"; the file looks like {model}"
    return ""


def _unpickled_global(error: Exception) -> str | None:
    """The class a weights-only load refused (a whole pickled model), from torch's message."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def _load_file(path: Path, key: str) -> Any:
    """The object in a .safetensors or torch.save file, loaded weights-only; one line when it cannot be."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or pickled objects: torch and safetensors raise many types
        cls = _unpickled_global(e)
        if cls is not None:
            out = path.with_name(f"{path.name.split('.')[0]}_state_dict.pth")
            raise FerlabError(
                f"{key}={path} is a pickled Python object ({cls}), not a state dict; ferlab loads weights only "
                f"(unpickling can run code). If it is a whole model saved with torch.save(model) and you trust it, "
                f"convert it once: python -c \"import torch; torch.save(torch.load('{path}', weights_only=False)"
                f".state_dict(), '{out}')\" and set {key}={out}") from None
        raise FerlabError(f"{key}={path} cannot be read as weights: {str(e).strip().splitlines()[0]}") from None


def unwrap(data: Any) -> Any:
    """The weights inside a checkpoint dict (`state_dict`/`model_state_dict`/`model`/`net`, nested or not), with
    the `module.`/`_orig_mod.` prefix that DataParallel, DDP and torch.compile put on every key removed."""
    while isinstance(data, dict):
        inner = next((data[w] for w in WRAPPERS if isinstance(data.get(w), dict)), None)
        if inner is None:
            break
        data = inner
    if isinstance(data, dict):
        for prefix in PREFIXES:
            if data and all(isinstance(k, str) and k.startswith(prefix) for k in data):
                data = {k[len(prefix):]: v for k, v in data.items()}
    return data


def read_state_dict(path: str | Path, key: str = "model.pretrained") -> dict[str, Tensor]:
    """A state dict from a .pth/.pt/.bin/.tar (torch.save, weights only) or .safetensors file, unwrapped."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise FerlabError(f"{key}={path}: expected imagenet, null or a {', '.join(SUFFIXES)} file")
    if not path.is_file():
        raise FerlabError(f"{key}={path}: no such file")
    data = unwrap(_load_file(path, key))
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


def rename(state_dict: Mapping[str, Tensor], pairs: list[tuple[str, str | None]]) -> dict[str, Tensor]:
    """Keys with the first matching (old prefix, new prefix) of `pairs` replaced; other keys unchanged; keys whose
    first match has a None target left out."""
    return {new: state_dict[old] for new, old in renamed_keys(state_dict, pairs).items()}


def renamed_keys(keys: Iterable[str], pairs: list[tuple[str, str | None]]) -> dict[str, str]:
    """new name -> old name for every key `rename` keeps."""
    out = {}
    for key in keys:
        old, new = next(((o, n) for o, n in pairs if key.startswith(o)), ("", ""))
        if new is not None:
            out[new + key[len(old):]] = key
    return out


def dropped_by(keys: Iterable[str], pairs: list[tuple[str, str | None]]) -> dict[str, str]:
    """prefix -> 'N tensors, ...' for the keys whose first matching pair drops them."""
    counts: dict[str, int] = {}
    for key in keys:
        old, new = next(((o, n) for o, n in pairs if key.startswith(o)), ("", ""))
        if new is None:
            counts[old] = counts.get(old, 0) + 1
    return {old.rstrip("."): f"{n} tensors, not used by this network" for old, n in counts.items()}


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

    `names` maps the file's keys (torchvision's, or a face-recognition layout's) to this family's modules; the
    load report is kept as `net.load_report`.
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
    pairs = names(net) if names else []
    origin = renamed_keys(state, pairs)
    renamed = {new: state[old] for new, old in origin.items()}
    net.load_report = load_weights(net, renamed, source, origin, dropped_by(state, pairs))
    return net
