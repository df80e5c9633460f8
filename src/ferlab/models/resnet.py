"""ResNet family: one class; ResNet-18/34, ResNeXt-50 and report 000's ResNeXt-18 are sets of arguments.

The variants differ in block type, blocks and channels per stage, grouping of the bottleneck's 3x3 conv,
stem, dropout after the last blocks of each stage, and whether pooled features of several stages are fused.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.models.base import FERNet
from ferlab.models.layers import (
    FeatureFusion,
    check_choice,
    check_positive,
    check_rate,
    make_act,
    make_norm,
    make_stem,
)
from ferlab.models.pretrained import load_pretrained, resnet_names
from ferlab.models.registry import register_model


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual add (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, *, mid: int, groups: int = 1,
                 norm: str = "batch", act: str = "relu") -> None:
        super().__init__()
        if groups != 1:
            raise FerlabError("model argument groups: basic blocks take only groups=1 (use block=bottleneck)")
        bias = norm == "none"  # without normalization the convs need their own offsets
        self.conv1, self.bn1 = conv3x3(cin, cout, stride, bias=bias), make_norm(norm, cout)
        self.conv2, self.bn2 = conv3x3(cout, cout, bias=bias), make_norm(norm, cout)
        self.act = make_act(act)
        self.downsample = _shortcut(cin, cout, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 reduce to `mid`, grouped 3x3 (strided), 1x1 expand to `cout`, residual add (ResNet-50, ResNeXt)."""

    expansion = 4

    def __init__(self, cin: int, cout: int, stride: int = 1, *, mid: int, groups: int = 1,
                 norm: str = "batch", act: str = "relu") -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1, self.bn1 = conv1x1(cin, mid, bias=bias), make_norm(norm, mid)
        self.conv2, self.bn2 = conv3x3(mid, mid, stride, groups, bias=bias), make_norm(norm, mid)
        self.conv3, self.bn3 = conv1x1(mid, cout, bias=bias), make_norm(norm, cout)
        self.act = make_act(act)
        self.downsample = _shortcut(cin, cout, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.downsample(x))


def _shortcut(cin: int, cout: int, stride: int, norm: str) -> nn.Module:
    """Identity, or a strided 1x1 projection (+ norm) when the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(conv1x1(cin, cout, stride, bias=norm == "none"), make_norm(norm, cout))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _bottleneck_width(planes: int, groups: int, width_per_group: int,
                      group_width: int | None) -> tuple[int, int]:
    """(mid channels, groups) of a bottleneck's 3x3 conv.

    torchvision/ResNeXt: `groups` groups of `width_per_group * planes / 64` channels. Report 000: the 3x3 conv
    is as wide as the stage (`planes`) and split into groups of `group_width` channels.
    """
    if group_width is None:
        return int(planes * width_per_group / 64) * groups, groups
    if planes % group_width:
        raise FerlabError(f"model argument group_width={group_width} does not divide stage channels {planes}")
    return planes, planes // group_width


class ResNet(FERNet):
    """ResNet/ResNeXt for any input channels, class count and size (global average pooling).

    Args:
        block: "basic" or "bottleneck".
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        channels: planes per stage; default `width * 2**i`. Stage output = planes * expansion.
        width: channels of the stem.
        groups, width_per_group: ResNeXt cardinality and per-group width (torchvision convention).
        group_width: instead, split a `planes`-wide 3x3 conv into groups of this many channels (report 000).
        expansion: bottleneck output / planes (default: the block's, 4 for bottleneck; report 000 uses 1).
        stem: "imagenet", "small", "fer" or "cifar" (see layers.make_stem).
        stage_drop_rates: (p, q): dropout p after the second-to-last and q after the last block of every
            stage (report 000); None adds no dropout modules.
        fusion, fusion_stages: fuse the pooled features of the last `fusion_stages` stages ("concat" or
            "weighted", see FeatureFusion); "none" uses the last stage only.
        drop_rate: dropout on the pooled features before the head.
    """

    def __init__(
        self, *, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2),
        channels: Sequence[int] | None = None, in_chans: int = 3, num_classes: int = 1000, width: int = 64,
        groups: int = 1, width_per_group: int = 64, group_width: int | None = None,
        expansion: int | None = None, stem: str = "imagenet", norm: str = "batch", act: str = "relu",
        stage_drop_rates: Sequence[float] | None = None, fusion: str = "none", fusion_stages: int = 2,
        drop_rate: float = 0.0, zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        check_choice("block", block, BLOCKS)
        channels = list(channels) if channels is not None else [width * 2**i for i in range(len(layers))]
        if len(channels) != len(layers) or not layers:
            raise FerlabError(f"model: {len(layers)} stage block counts but {len(channels)} channel counts")
        check_positive(width=width, groups=groups, **{f"layers[{i}]": n for i, n in enumerate(layers)})
        self.stem = make_stem(stem, in_chans, width, norm, act)
        block_cls, expansion = BLOCKS[block], expansion or BLOCKS[block].expansion
        stages, outs, cin = [], [], width
        for i, (n, planes) in enumerate(zip(layers, channels, strict=True)):
            mid, g = _bottleneck_width(planes, groups, width_per_group, group_width)
            kw = dict(mid=mid, groups=g, norm=norm, act=act)
            blocks = [block_cls(cin if j == 0 else planes * expansion, planes * expansion,
                                2 if i > 0 and j == 0 else 1, **kw) for j in range(n)]
            stages.append(_with_dropout(blocks, stage_drop_rates))
            cin = planes * expansion
            outs.append(cin)
        self.stages = nn.Sequential(*stages)
        self.fusion_stages = 1 if fusion == "none" else fusion_stages
        if not 1 <= self.fusion_stages <= len(outs):
            raise FerlabError(f"model argument fusion_stages={fusion_stages} must be in 1..{len(outs)}")
        self.fusion = FeatureFusion(outs[-self.fusion_stages:], fusion)
        self.init_head(self.fusion.num_features, num_classes, drop_rate)
        self.set_cam_layer(self.stages[-1])
        if self.fusion_stages == 1:  # fused stages: the embedding is not pooled from the last map alone
            self.feature_map_channels = outs[-1]
        self.no_feature_map_reason = f"model.fusion={fusion} pools {self.fusion_stages} stages into its embedding"
        _init_weights(self, zero_init_residual)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        maps = []
        x = self.stem(x)  # (B, width, H/4, W/4) with the imagenet stem
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return self.fusion(maps[-self.fusion_stages:])

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C_last, H/32, W/32) (imagenet stem)
        if not self.has_feature_map:
            raise self.no_feature_map()
        return self.stages(self.stem(x))

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, C_last, h, w) -> (B, C_last): global average pooling
        if not self.has_feature_map:
            raise self.no_feature_map()
        return self.fusion([fmap])


def _with_dropout(blocks: list[nn.Module], rates: Sequence[float] | None) -> nn.Sequential:
    """One stage's blocks, Dropout(rates[0]) after the second-to-last and Dropout(rates[1]) after the last.

    Report 000's text; its code's if/elif chain skipped the first dropout when the second-to-last block was
    the stage's projection block, which this does not copy.
    """
    if rates is None:
        return nn.Sequential(*blocks)
    if len(rates) != 2:
        raise FerlabError(f"model argument drop_rates={list(rates)} must be a pair (second-to-last, last)")
    check_rate(**{f"drop_rates[{i}]": r for i, r in enumerate(rates)})
    layers: list[nn.Module] = []
    for j, blk in enumerate(blocks):
        layers.append(blk)
        if j >= len(blocks) - 2:
            layers.append(nn.Dropout(rates[j - len(blocks) + 2]))
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He init for convs, unit batch norm; optionally zero the last BN of each block (Goyal et al.)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            last_bn = getattr(m, "bn2", None) if isinstance(m, BasicBlock) else getattr(m, "bn3", None)
            if isinstance(last_bn, nn.BatchNorm2d):
                nn.init.zeros_(last_bn.weight)


@register_model
def resnet18(*, in_chans: int = 3, num_classes: int = 1000, pretrained: str | None = None,
             stem: str = "imagenet", width: int = 64, drop_rate: float = 0.0, norm: str = "batch",
             act: str = "relu", fusion: str = "none", fusion_stages: int = 2) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); 11,689,512 parameters with 3 channels and 1000 classes.
    `pretrained`: null, imagenet (torchvision's IMAGENET1K_V1) or a state-dict file (see models.pretrained)."""
    net = ResNet(block="basic", layers=(2, 2, 2, 2), in_chans=in_chans, num_classes=num_classes, stem=stem,
                 width=width, drop_rate=drop_rate, norm=norm, act=act, fusion=fusion, fusion_stages=fusion_stages)
    return load_pretrained(net, pretrained, imagenet="ResNet18_Weights.IMAGENET1K_V1", names=resnet_names)


@register_model
def resnet34(*, in_chans: int = 3, num_classes: int = 1000, pretrained: str | None = None,
             stem: str = "imagenet", width: int = 64, drop_rate: float = 0.0, norm: str = "batch",
             act: str = "relu", fusion: str = "none", fusion_stages: int = 2) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); 21,797,672 parameters with 3 channels and 1000 classes."""
    net = ResNet(block="basic", layers=(3, 4, 6, 3), in_chans=in_chans, num_classes=num_classes, stem=stem,
                 width=width, drop_rate=drop_rate, norm=norm, act=act, fusion=fusion, fusion_stages=fusion_stages)
    return load_pretrained(net, pretrained, imagenet="ResNet34_Weights.IMAGENET1K_V1", names=resnet_names)


@register_model
def resnet18_small(*, in_chans: int = 3, num_classes: int = 1000, pretrained: str | None = None,
                   stem: str = "imagenet", width: int = 32, drop_rate: float = 0.0, norm: str = "batch",
                   act: str = "relu", fusion: str = "none", fusion_stages: int = 2) -> ResNet:
    """ResNet-18 at half width (32 base channels, 2.8 M parameters): the quick CPU default of `make train`.
    ImageNet weights fit it only at width=64 (then it is resnet18)."""
    return resnet18(in_chans=in_chans, num_classes=num_classes, pretrained=pretrained, stem=stem, width=width,
                    drop_rate=drop_rate, norm=norm, act=act, fusion=fusion, fusion_stages=fusion_stages)


@register_model
def resnext50_32x4d(*, in_chans: int = 3, num_classes: int = 1000, pretrained: str | None = None,
                    stem: str = "imagenet", width: int = 64, groups: int = 32, width_per_group: int = 4,
                    drop_rate: float = 0.0, norm: str = "batch", act: str = "relu", fusion: str = "none",
                    fusion_stages: int = 2) -> ResNet:
    """ResNeXt-50 32x4d: bottlenecks (3, 4, 6, 3), 32 groups of 4*2**i channels; 25,028,904 parameters."""
    net = ResNet(block="bottleneck", layers=(3, 4, 6, 3), in_chans=in_chans, num_classes=num_classes,
                 stem=stem, width=width, groups=groups, width_per_group=width_per_group, drop_rate=drop_rate,
                 norm=norm, act=act, fusion=fusion, fusion_stages=fusion_stages)
    return load_pretrained(net, pretrained, imagenet="ResNeXt50_32X4D_Weights.IMAGENET1K_V1", names=resnet_names)


@register_model
def resnext18_fer(*, in_chans: int = 3, num_classes: int = 1000, pretrained: str | None = None,
                  arch: Sequence[Sequence[int]] = ((2, 64), (2, 128), (2, 256)),
                  drop_rates: Sequence[float] = (0.2, 0.4), group_width: int = 32, stem: str = "imagenet",
                  width: int = 64, drop_rate: float = 0.0, norm: str = "batch", act: str = "relu",
                  fusion: str = "none", fusion_stages: int = 2) -> ResNet:
    """Report 000's "ResNeXt-18": `arch` = [blocks, channels] per stage; bottlenecks keep the stage width
    (1x1 -> 3x3 in groups of `group_width` channels -> 1x1), a stride-2 1x1 projection opens every later
    stage, and `drop_rates` = dropout after the second-to-last and the last block of every stage."""
    if any(len(stage) != 2 for stage in arch):
        raise FerlabError(f"model argument arch={[list(s) for s in arch]} must list [blocks, channels] pairs")
    net = ResNet(block="bottleneck", layers=[int(s[0]) for s in arch], channels=[int(s[1]) for s in arch],
                 expansion=1, group_width=group_width, stage_drop_rates=drop_rates, in_chans=in_chans,
                 num_classes=num_classes, stem=stem, width=width, drop_rate=drop_rate, norm=norm, act=act,
                 fusion=fusion, fusion_stages=fusion_stages)
    return load_pretrained(net, pretrained)  # no torchvision twin: a file of its own names
