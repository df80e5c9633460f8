"""Any timm architecture as a zoo model (`model=timm model.name=convnext_nano`), with timm's pretrained loading.

timm builds the network (`in_chans`, `num_classes`, weights: its hub download and cache, or a file through
`pretrained_cfg_overlay=dict(file=...)`, so channel and classifier adaptation are timm's own); ferlab takes its
linear classifier as the FERNet `head` and asks timm for the pooled pre-logits as `forward_features`.

Grad-CAM's `cam_layer`: convolutional nets expose their last feature map (B, C, h, w); ViT-style nets (patch
tokens plus prefix tokens) expose the patch tokens entering the last block, laid out on the patch grid: the
cls-token pooled output of the last block itself has no gradient on the patch tokens. Other token layouts have
no cam_layer (`ferlab explain` then says so in one line; saliency and the other methods work).
timm is an optional extra (`pip install -e .[timm]`), imported when the model is built.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.models.base import FERNet
from ferlab.models.layers import check_rate
from ferlab.models.pretrained import SUFFIXES, LoadReport, read_state_dict
from ferlab.models.registry import register_model

log = logging.getLogger(__name__)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise FerlabError("model=timm needs the timm package: pip install -e '.[timm]' (or pip install timm)") from None
    return timm


class PatchGrid(nn.Module):
    """(B, prefix + gh*gw, C) tokens -> the same tokens, the patches passing through `grid` as (B, C, gh, gw)."""

    def __init__(self, prefix: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.prefix, self.grid_size = prefix, tuple(grid_size)
        self.grid = nn.Identity()  # Grad-CAM's layer: its output is the patch grid

    def forward(self, tokens: Tensor) -> Tensor:
        prefix, patches = tokens[:, : self.prefix], tokens[:, self.prefix:]  # (B, P, C), (B, gh*gw, C)
        grid = self.grid(patches.transpose(1, 2).reshape(*patches.shape[::2], *self.grid_size))
        return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], 1)


class _Reroute:
    """A forward pre-hook sending a block's token input through a module (picklable, deep-copyable)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, block: nn.Module, args: tuple) -> tuple:
        return (self.module(args[0]), *args[1:])


class TimmNet(FERNet):
    """A timm network whose classifier is the FERNet head; `body` is the timm model without it."""

    def __init__(self, body: nn.Module, drop_rate: float = 0.0) -> None:
        super().__init__()
        check_rate(drop_rate=drop_rate)
        head = body.get_classifier()
        if not isinstance(head, nn.Linear):
            raise FerlabError(f"model.name={body.pretrained_cfg.get('architecture')}: its classifier is a "
                              f"{type(head).__name__}, not a linear layer; model=timm needs one")
        body.reset_classifier(0)  # the body now ends in pooled pre-logits (B, num_features)
        self.body, self.head, self.head_drop = body, head, nn.Dropout(drop_rate)
        self.num_features = head.in_features
        self.layout = "NHWC" if getattr(body, "output_fmt", "") == "NHWC" else "NCHW"
        if _is_vit(body):
            self.layout = "tokens"
            self.patch_grid = PatchGrid(body.num_prefix_tokens, body.patch_embed.grid_size)
            body.blocks[-1].register_forward_pre_hook(_Reroute(self.patch_grid))
            self.set_cam_layer(self.patch_grid.grid)
            self.no_feature_map_reason = "its features are tokens (a ViT-style timm model)"
        else:
            self.feature_map = nn.Identity()  # Grad-CAM's layer when the body's features are a map
            self.set_cam_layer(self.feature_map)
            self.feature_map_channels = int(body.num_features)  # timm: channels of forward_features' map

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        maps = self.body.forward_features(x)  # (B, C, h, w); (B, h, w, C) for NHWC nets; (B, N, C) tokens
        if self.layout == "NCHW" and maps.ndim == 4:
            maps = self.feature_map(maps)
        elif self.layout == "NHWC":
            maps = self.feature_map(maps.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.body.forward_head(maps, pre_logits=True)

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, feature_map_channels, h, w)
        if not self.has_feature_map:
            raise self.no_feature_map()
        maps = self.body.forward_features(x)
        if maps.ndim != 4:  # a token model timm lays out otherwise (no patch grid)
            raise FerlabError(f"timm {self.body.pretrained_cfg.get('architecture')} has no single feature map: "
                              f"its features are {maps.ndim}-d, not (B, C, h, w)")
        return self.feature_map(maps.permute(0, 3, 1, 2) if self.layout == "NHWC" else maps)  # NCHW view

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, C, h, w) -> (B, num_features): timm's pooling and neck
        if not self.has_feature_map:
            raise self.no_feature_map()
        return self.body.forward_head(fmap.permute(0, 2, 3, 1) if self.layout == "NHWC" else fmap, pre_logits=True)


def _is_vit(body: nn.Module) -> bool:
    """Patch tokens after prefix tokens in `blocks` (ViT, DeiT, EVA, BEiT ...), with a fixed patch grid."""
    grid = getattr(getattr(body, "patch_embed", None), "grid_size", None)
    return isinstance(getattr(body, "num_prefix_tokens", None), int) and hasattr(body, "blocks") and grid is not None


def _check_name(timm: Any, name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "see timm.list_models()"
        raise FerlabError(f"model.name={name!r} is not a timm architecture; {hint}")


def _offline_hint(timm: Any, name: str) -> str:
    """Where timm looks for `name`'s default weights, and what to put where without a network."""
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    cfg = cfg.to_dict() if cfg is not None else {}
    if cfg.get("hf_hub_id"):
        from huggingface_hub.constants import HF_HUB_CACHE

        file = cfg.get("hf_hub_filename") or "model.safetensors"
        other = "" if cfg.get("hf_hub_filename") else " (or pytorch_model.bin)"
        return (f"on a connected machine it downloads once into {HF_HUB_CACHE}; offline, get {file}{other} from "
                f"https://huggingface.co/{cfg['hf_hub_id']} and set model.pretrained=/path/to/{file}")
    if cfg.get("url"):
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return f"put {cfg['url']} into {folder}/, or set model.pretrained=/path/to/that file"
    return "timm lists no weights for it: use model.pretrained=null or a file"


def _create(timm: Any, name: str, pretrained: bool | str | None, img_size: int | None, **kwargs: Any) -> nn.Module:
    """timm.create_model with timm's pretrained path; img_size only for architectures that take it."""
    if isinstance(pretrained, str):
        kwargs["pretrained_cfg_overlay"] = dict(file=str(Path(pretrained).expanduser()))
    try:
        return timm.create_model(name, pretrained=bool(pretrained), img_size=img_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise FerlabError(f"model=timm {name}: {e}") from None
    return timm.create_model(name, pretrained=bool(pretrained), **kwargs)


def _mismatch(timm: Any, name: str, path: str, in_chans: int) -> str:
    """The first names that differ between a weight file and the architecture."""
    keys, theirs = list(timm.create_model(name, in_chans=in_chans).state_dict()), list(read_state_dict(path))
    found = [f"{k} not in the file" for k in keys if k not in theirs]  # in the network's order: stem first
    found += [f"file tensor {k} has no place here" for k in theirs if k not in keys]
    return "; ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")


def _report(net: TimmNet, name: str, pretrained: bool | str, in_chans: int, num_classes: int) -> LoadReport:
    """What timm's loader did, by its rules: classifier re-initialised when the class count differs from the
    weights' dataset, first conv adapted when the channel count differs."""
    cfg = net.body.pretrained_cfg
    source = f"timm {name} ({cfg.get('hf_hub_id') or cfg.get('url')})" if pretrained is True else str(pretrained)
    total = len(net.state_dict())
    report = LoadReport(source=source, loaded=total, total=total)
    src_chans = (cfg.get("input_size") or (3,))[0]
    if in_chans != src_chans and cfg.get("first_conv"):
        report.adapted.append(f"{cfg['first_conv']} adapted from {src_chans} to {in_chans} input channels")
    if num_classes != cfg.get("num_classes", num_classes):
        report.skipped["head"] = f"{num_classes} classes here, {cfg['num_classes']} in the source"
        report.loaded -= 2  # the classifier's weight and bias
    return report


# timm.create_model arguments that load weights or choose where from: only model.pretrained does that here
WEIGHT_KEYS = frozenset({"checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained"})


@register_model
def timm(*, name: str = "efficientnet_b0", in_chans: int = 3, num_classes: int = 1000,
         pretrained: bool | str | None = None, img_size: int | None = None, drop_rate: float = 0.0,
         drop_path_rate: float | None = None, model_kwargs: dict | None = None) -> TimmNet:
    """Any timm architecture by `name` (a pretrained tag like `convnext_nano.in12k_ft_in1k` may follow a dot).

    pretrained: null (random init), true (timm's default weights: its hub download and cache) or a weight file
        loaded through timm's pretrained path (channel and classifier adaptation by timm).
    img_size: the data's image size, passed to architectures that take one (ViT, Swin: patch grid and
        position embeddings follow it); others ignore it.
    drop_rate: dropout before the head; drop_path_rate: timm's stochastic depth (null: timm's default).
    model_kwargs: further keyword arguments for timm.create_model.
    """
    lib = _timm()
    _check_name(lib, name)
    loading = sorted(WEIGHT_KEYS & set(model_kwargs or {}))
    if loading:  # weights come only through model.pretrained (and a checkpoint's model_kwargs never name a file)
        raise FerlabError(f"model.model_kwargs.{loading[0]}: weights are loaded through model.pretrained=<file>, "
                          "not through timm.create_model's own arguments")
    if pretrained is not None and not isinstance(pretrained, bool):
        path = Path(str(pretrained)).expanduser()
        if path.suffix not in SUFFIXES or not path.is_file():
            raise FerlabError(f"model.pretrained={pretrained}: expected null, true or an existing "
                              f"{', '.join(SUFFIXES)} file")
    kwargs = dict(in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate, **(model_kwargs or {}))
    try:
        body = _create(lib, name, pretrained or None, img_size, **kwargs)
    except FerlabError:
        raise
    except Exception as e:  # offline, missing cache, or a file of another network (timm loads strictly)
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        if pretrained is True:
            raise FerlabError(f"model.pretrained=true: timm cannot fetch {name}'s weights ({reason}); "
                              f"{_offline_hint(lib, name)}") from None
        if pretrained:
            reason = _mismatch(lib, name, str(pretrained), in_chans) or reason
            raise FerlabError(f"{pretrained} does not fit timm {name}: {reason}") from None
        raise FerlabError(f"model=timm {name}: {reason}") from None
    net = TimmNet(body, drop_rate)
    if pretrained:
        net.load_report = _report(net, name, pretrained, in_chans, num_classes)
        log.info("weights %s", net.load_report.summary())
    return net
