"""Rebuild a trained network from a checkpoint alone: the run config stored in it says how.

Used by eval, explain, predict, demo and export, so none of them needs the model overrides repeated.
Loading is weights-only, and the stored config is data (`ferlab.runs.stored`): the network comes from a builder
in ferlab's model registry called with plain keyword values, never from `instantiate` on what the file says.
A user's own model class is named by the user (`+model._target_=...`, trusted like any config), never by the
checkpoint alone. A file that is missing, truncated, foreign, hostile, or whose weights do not fit the rebuilt
network is one clear `FerlabError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferlab.checkpoints.ckpt_file import load_checkpoint, net_weights
from ferlab.data.preprocessing import KEY as PREPROCESSING_KEY
from ferlab.data.preprocessing import check_record
from ferlab.data.rebuild import check_stored_data
from ferlab.errors import FerlabError
from ferlab.lit.heads import Head, classes_head, stored_head
from ferlab.lit.user_errors import error_line
from ferlab.models.registry import builder_for_target
from ferlab.runs.stored import plain_list, refused, target_and_kwargs
from ferlab.weights import resolve_checkpoint


@dataclass
class Restored:
    """A network in eval mode plus what is needed to feed it.

    config: the resolved run config (plain dict) the checkpoint was trained with; its `model` and `data`
    sections have been checked (plain values, registered builder and reader), the rest is never used to build.
    class_names: label order of the head; in_chans, image_size, mean, std: the input it expects
    (float images in [0, 1] are normalized as (x - mean) / std). head: what the net's outputs are (class logits,
    valence/arousal or both; `ferlab.lit.heads`), rebuilt from the stored `head` config's plain values.
    """

    net: nn.Module
    config: dict[str, Any]
    class_names: list[str]
    in_chans: int
    image_size: int
    mean: list[float]
    std: list[float]
    path: Path
    head: Head | None = None
    preprocessing: dict[str, Any] | None = None  # `ferlab.infer.preprocessing` record, None in older checkpoints

    def __post_init__(self) -> None:
        if self.head is None:  # a plain classifier over its class names
            self.head = classes_head(len(self.class_names))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> the network's input scale."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _norm_stats(checkpoint: dict, data: dict, in_chans: int, where: str) -> tuple[list[float], list[float]]:
    """The normalization the run trained with: measured values saved by the datamodule win over config."""
    stats = checkpoint.get("ferlab_normalization") or {}
    mean, std = stats.get("mean", data.get("mean")), stats.get("std", data.get("std"))
    if not isinstance(mean, list) or not isinstance(std, list):
        raise FerlabError(f"{where}: checkpoint has no usable normalization (data.mean/std) in its config")
    mean, std = plain_list(mean, "data.mean", where, (int, float)), plain_list(std, "data.std", where, (int, float))
    if len(mean) == 1 and in_chans == 3:
        mean, std = mean * 3, std * 3
    return [float(m) for m in mean], [float(s) for s in std]


def _int(value: Any, key: str, where: str, default: int) -> int:
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise refused(where, key, f"expected a positive integer, got {value!r}"[:120])
    return value


def model_builder(model_cfg: Any, where: str, user_model: Mapping | None = None) -> tuple[str, Callable[[], nn.Module]]:
    """(the model's name, a call that builds it) for a stored model config, checked before anything is called.

    The builder is the registered ferlab model the config names, or `user_model` (the user's own trusted
    `{_target_: ...}` config), called with the stored keyword values. `pretrained` is dropped to null: the
    weights are the checkpoint's, not downloaded again.
    """
    target, kwargs = target_and_kwargs(model_cfg, "model", where)
    if user_model:  # the stored arguments, but not `pretrained`: the weights are the checkpoint's
        from hydra.utils import instantiate

        user = dict(user_model)
        extra = {k: v for k, v in kwargs.items() if k not in user and k != "pretrained"}
        return str(user.get("_target_")), lambda: instantiate(user, **extra)
    if "pretrained" in kwargs:
        kwargs["pretrained"] = None
    try:
        builder = builder_for_target(target)
    except FerlabError:
        raise refused(where, "model._target_", f"{target!r} is not a registered ferlab model; a model class of your "
                      f"own must be named by you: +model._target_=<its import path>") from None
    return target, lambda: builder(**kwargs)


def rebuild(name: str, build: Callable[[], nn.Module], where: str) -> nn.Module:
    """Call a checked builder; an argument it no longer takes is one line."""
    try:
        return build()
    except Exception as e:  # the stored arguments no longer fit (renamed or removed argument, bad value)
        raise FerlabError(f"{where}: cannot rebuild model {name}: {error_line(e)}") from None


def method_wrapper(method_cfg: Any, where: str) -> Callable[[nn.Module], nn.Module]:
    """A call that wraps a rebuilt zoo net as the stored training method's inference network (identity for none
    or plain), checked before anything is called: the method must be registered in `ferlab.methods`, its
    arguments plain values."""
    if method_cfg is None:  # checkpoints from before methods existed: plain training
        return lambda net: net
    target, kwargs = target_and_kwargs(method_cfg, "train_method", where)
    from ferlab.methods.registry import method_for_target

    try:
        cls = method_for_target(target)
    except FerlabError:
        raise refused(where, "train_method._target_", f"{target!r} is not a registered ferlab method") from None

    def wrap(net: nn.Module) -> nn.Module:
        try:
            return cls(**kwargs).wrap(net)
        except Exception as e:  # arguments that no longer fit, a net without what the method needs
            raise FerlabError(f"{where}: cannot rebuild method {target}: {error_line(e)}") from None

    return wrap


def stored_config(checkpoint: dict, where: str) -> dict[str, Any]:
    """The run config inside a checkpoint, with its model, method and data sections checked (nothing is called)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    config = hparams.get("config") if isinstance(hparams, dict) else None
    if not isinstance(config, dict) or "model" not in config or "state_dict" not in checkpoint:
        raise FerlabError(f"{where} is not a ferlab checkpoint (no stored run config or weights)")
    target_and_kwargs(config["model"], "model", where)
    if config.get("train_method") is not None:
        target_and_kwargs(config["train_method"], "train_method", where)
    if config.get("data") is not None:
        check_stored_data(config["data"], where)
    return config


def load_net_weights(net: nn.Module, checkpoint: dict, where: str) -> None:
    """The checkpoint's `net.*` tensors into `net`; a mismatch is one line with the first differences."""
    try:
        net.load_state_dict(net_weights(checkpoint))
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise FerlabError(f"{where}: weights do not fit the rebuilt model: {first}") from None


def restore(ckpt_path: str | Path, map_location: str | torch.device = "cpu",
            model: Mapping | None = None) -> Restored:
    """Load a ferlab checkpoint (weights_only; `builtin:<name>`: one shipped with ferlab), check its stored config
    and rebuild its network.

    model: the user's own model config (`{_target_: ...}`, trusted), for a network outside ferlab's registry.
    """
    path = resolve_checkpoint(ckpt_path)  # builtin:<name> -> the file shipped inside ferlab
    where = str(path)
    checkpoint = load_checkpoint(path, map_location=map_location)
    config = stored_config(checkpoint, where)
    data = config.get("data") or {}
    in_chans = _int(data.get("in_chans"), "data.in_chans", where, 1)
    image_size = _int(data.get("image_size"), "data.image_size", where, 48)
    mean, std = _norm_stats(checkpoint, data, in_chans, where)
    names = (checkpoint.get("hyper_parameters") or {}).get("class_names") or data.get("class_names") or []
    class_names = plain_list(list(names) if isinstance(names, (list, tuple)) else names, "class_names", where, str)
    head = stored_head(config.get("head"), len(class_names), where)
    name, build = model_builder(config["model"], where, model)
    wrap = method_wrapper(config.get("train_method"), where)
    net = wrap(rebuild(name, build, where))  # the network the method evaluates (SCN's weighting, DAN's heads)
    load_net_weights(net, checkpoint, where)
    record = check_record(checkpoint.get(PREPROCESSING_KEY), where)
    return Restored(net=net.eval().to(map_location), config=config, class_names=list(class_names),
                    in_chans=in_chans, image_size=image_size, mean=mean, std=std, path=path, head=head,
                    preprocessing=record)


def check_classes(restored: Restored, num_classes: int, where: str) -> None:
    """A checkpoint's head must match the data it is used on."""
    if len(restored.class_names) != num_classes:
        raise FerlabError(
            f"{restored.path} predicts {len(restored.class_names)} classes {restored.class_names}, "
            f"but {where} has {num_classes}"
        )
