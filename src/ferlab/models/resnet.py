"""ResNet family: one class, variants are arguments (block type, blocks per stage, widths, stem, groups)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ferlab.models.base import FERNet
from ferlab.models.registry import register_model


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual add (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 reduce, grouped 3x3, 1x1 expand (x4), residual add (ResNet-50+, ResNeXt)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * groups
        cout = planes * self.expansion
        self.conv1, self.bn1 = conv1x1(cin, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, stride, groups), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity, or a strided 1x1 projection with batch norm when the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stem(kind: str, in_chans: int, width: int) -> nn.Sequential:
    """`imagenet`: 7x7/2 conv + 3x3/2 maxpool (4x smaller maps); `small`: 3x3/1 conv, full resolution."""
    stems = {
        "imagenet": lambda: [nn.Conv2d(in_chans, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)],
        "small": lambda: [conv3x3(in_chans, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)],
    }
    if kind not in stems:
        raise ValueError(f"stem must be one of {sorted(stems)}, got {kind!r}")
    return nn.Sequential(*stems[kind]())


class ResNet(FERNet):
    """ResNet/ResNeXt for any input channels, class count and size (global average pooling).

    Args:
        block: "basic" or "bottleneck".
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        width: channels of the stem and of the first stage; stage i has width * 2**i planes.
        groups, width_per_group: ResNeXt cardinality and per-group width of bottleneck blocks.
        stem: "imagenet" or "small" (see make_stem).
        drop_rate: dropout on the pooled features before the head.
    """

    def __init__(
        self,
        *,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        in_chans: int = 3,
        num_classes: int = 1000,
        width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        stem: str = "imagenet",
        drop_rate: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        block_cls = BLOCKS[block]
        self.stem = make_stem(stem, in_chans, width)
        stages, cin = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block_cls(cin, planes, stride, groups, width_per_group))
                cin = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features, self.drop_rate = cin, drop_rate
        self.head = nn.Linear(cin, num_classes)
        self.cam_layer = self.stages[-1]
        _init_weights(self, zero_init_residual)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He init for convs, unit batch norm; optionally zero the last BN of each block (Goyal et al.)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            last_bn = getattr(m, "bn3", None) or (getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None)
            if last_bn is not None:
                nn.init.zeros_(last_bn.weight)


@register_model
def resnet18(*, in_chans: int = 3, num_classes: int = 1000, stem: str = "imagenet", width: int = 64,
             drop_rate: float = 0.0) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2)."""
    return ResNet(block="basic", layers=(2, 2, 2, 2), in_chans=in_chans, num_classes=num_classes,
                  stem=stem, width=width, drop_rate=drop_rate)


@register_model
def resnet34(*, in_chans: int = 3, num_classes: int = 1000, stem: str = "imagenet", width: int = 64,
             drop_rate: float = 0.0) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return ResNet(block="basic", layers=(3, 4, 6, 3), in_chans=in_chans, num_classes=num_classes,
                  stem=stem, width=width, drop_rate=drop_rate)


@register_model
def resnet18_small(*, in_chans: int = 3, num_classes: int = 1000, stem: str = "imagenet", width: int = 32,
                   drop_rate: float = 0.0) -> ResNet:
    """ResNet-18 at half width (32 base channels, 2.8 M parameters): the quick CPU default of `make train`."""
    return resnet18(in_chans=in_chans, num_classes=num_classes, stem=stem, width=width, drop_rate=drop_rate)
