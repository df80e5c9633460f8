"""Any timm architecture as a zoo model (`model=timm model.name=convnext_nano`), with timm's pretrained loading.

timm builds the network (`in_chans`, `num_classes`, weights: its hub download and cache, or a local file that
ferlab reads weights-only, unwraps (models.pretrained.read_state_dict, models.face_weights.timm_state_dict) and
hands to timm as `pretrained_cfg_overlay=dict(state_dict=..., num_classes=<the file's>)`, so the checkpoint filter,
channel and classifier adaptation are timm's own); ferlab takes its linear classifier as the FERNet `head` and asks
timm for the pooled pre-logits as `forward_features`.

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
from ferlab.models.face_weights import timm_state_dict
from ferlab.models.layers import check_rate
from ferlab.models.pretrained import SUFFIXES, LoadReport, misfit, read_state_dict, shape_of
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


def _create(timm: Any, name: str, weights: bool | dict | None, img_size: int | None, **kwargs: Any) -> nn.Module:
    """timm.create_model with timm's pretrained path (True: its download; a dict: a pretrained_cfg overlay holding
    the file's state dict); img_size only for architectures that take it."""
    if isinstance(weights, dict):
        kwargs["pretrained_cfg_overlay"] = weights
    try:
        return timm.create_model(name, pretrained=bool(weights), img_size=img_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise FerlabError(f"model=timm {name}: {e}") from None
    return timm.create_model(name, pretrained=bool(weights), **kwargs)


def _classifier(timm: Any, name: str) -> str:
    """timm's name of the architecture's classifier module (pretrained_cfg "classifier"; built on the meta device
    when the name has no registered cfg, e.g. a deprecated alias such as tf_efficientnet_b2_ns)."""
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    found = cfg.classifier if cfg is not None else None
    if found is None:
        with torch.device("meta"):
            found = timm.create_model(name).pretrained_cfg.get("classifier")
    return (found if isinstance(found, str) else (found or ("classifier",))[0]) or "classifier"


def _file_overlay(timm: Any, name: str, pretrained: Any) -> dict[str, Any]:
    """The pretrained_cfg overlay that loads the file `pretrained` through timm's own path (its checkpoint filter,
    first-conv and classifier adaptation): the file's state dict in timm's names, its class count as num_classes."""
    path = Path(str(pretrained)).expanduser()
    if path.suffix not in SUFFIXES or not path.is_file():
        raise FerlabError(f"model.pretrained={pretrained}: expected null, true or an existing {', '.join(SUFFIXES)} file")
    state, classes = timm_state_dict(read_state_dict(path), _classifier(timm, name))
    return dict(state_dict=state, num_classes=classes, source=None)  # source: not the hub, even where timm says so


def _mismatch(timm: Any, name: str, state: dict[str, Tensor]) -> str:
    """The first names (and shapes) that differ between a weight file and the architecture (as timm builds it for
    the file: 3 channels; the classifier, which timm re-initialises when its size differs, left out)."""
    with torch.device("meta"):
        mine = timm.create_model(name).state_dict()
    head = f"{_classifier(timm, name)}."
    found = [f"{k} ({shape_of(v)}) not in the file" for k, v in mine.items() if k not in state]  # stem first
    found += [f"{k} is {shape_of(v)}, {shape_of(state[k])} in the file" for k, v in mine.items()
              if k in state and state[k].shape != v.shape and not k.startswith(head)]
    found += [f"file tensor {k} ({shape_of(v)}) has no place here" for k, v in state.items() if k not in mine]
    return misfit(found)


def _report(net: TimmNet, name: str, pretrained: bool | str, in_chans: int, num_classes: int,
            state: dict[str, Tensor] | None = None) -> LoadReport:
    """What timm's loader did, by its rules: classifier re-initialised when the class count differs from the
    weights' (a file without a classifier has 0), first conv adapted when the channel count differs; batch norm
    counters a file (`state`) lacks are not counted, as in models.pretrained.load_weights."""
    cfg = net.body.pretrained_cfg
    source = f"timm {name} ({cfg.get('hf_hub_id') or cfg.get('url')})" if pretrained is True else str(pretrained)
    counters = [k for k in net.body.state_dict() if k.endswith(".num_batches_tracked")]
    total = len(net.state_dict()) - (0 if state is None else len([k for k in counters if k not in state]))
    report = LoadReport(source=source, loaded=total, total=total)
    src_chans = (cfg.get("input_size") or (3,))[0]
    if in_chans != src_chans and cfg.get("first_conv"):
        report.adapted.append(f"{cfg['first_conv']} adapted from {src_chans} to {in_chans} input channels")
    theirs = cfg.get("num_classes", num_classes)
    if num_classes != theirs:
        report.skipped["head"] = (f"{num_classes} classes here, {theirs} in the source" if theirs
                                  else "the source has no classifier")
        report.loaded -= 2  # the classifier's weight and bias
    return report


# timm.create_model arguments that load weights or choose where from: only model.pretrained does that here
WEIGHT_KEYS = frozenset({"checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained"})


@register_model
def timm(*, name: str = "efficientnet_b0", in_chans: int = 3, num_classes: int = 1000,
         pretrained: bool | str | None = None, img_size: int | None = None, drop_rate: float = 0.0,
         drop_path_rate: float | None = None, model_kwargs: dict | None = None) -> TimmNet:
    """Any timm architecture by `name` (a pretrained tag like `convnext_nano.in12k_ft_in1k` may follow a dot).

    pretrained: null (random init), true (timm's default weights: its hub download and cache) or a weight file (a
        state dict, wrapped or prefixed as models.pretrained.read_state_dict takes them) loaded through timm's
        pretrained path (checkpoint filter, channel and classifier adaptation by timm).
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
    weights = pretrained if pretrained is None or isinstance(pretrained, bool) else _file_overlay(lib, name, pretrained)
    kwargs = dict(in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate, **(model_kwargs or {}))
    try:
        body = _create(lib, name, weights or None, img_size, **kwargs)
    except FerlabError:
        raise
    except Exception as e:  # offline, missing cache, or a file of another network (timm loads strictly)
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        if pretrained is True:
            raise FerlabError(f"model.pretrained=true: timm cannot fetch {name}'s weights ({reason}); "
                              f"{_offline_hint(lib, name)}") from None
        if pretrained:
            reason = _mismatch(lib, name, weights["state_dict"]) or reason
            raise FerlabError(f"{pretrained} does not fit timm {name}: {reason}") from None
        raise FerlabError(f"model=timm {name}: {reason}") from None
    body.pretrained_cfg.pop("state_dict", None)  # the file's tensors: not kept twice (nor deep-copied with the net)
    net = TimmNet(body, drop_rate)
    if pretrained:
        state = weights["state_dict"] if isinstance(weights, dict) else None
        net.load_report = _report(net, name, pretrained, in_chans, num_classes, state)
        log.info("weights %s", net.load_report.summary())
    return net
