"""Plain conv stacks: one class driven by per-stage channel lists (VGG-11/13/16/19 with or without BN, report
002's VGG, a VGG-19 for 48x48 input, the FER+ reference VGG-13 and Khaireddin's VGGNet; the LeNet- and
AlexNet-style builders in small.py use it too).

A stage is `convs` (conv-norm-act repeated; report 002 orders conv-act-norm), `pool` and an optional dropout;
then adaptive average pooling to `pool_size`, an MLP of `hidden` widths and the linear head.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.models.base import FERNet
from ferlab.models.layers import check_choice, check_positive, check_rate, linear, make_act, make_norm
from ferlab.models.pretrained import load_pretrained, vgg_names
from ferlab.models.registry import register_model

# torchvision's configurations A, B, D, E as channels per stage (each stage ends in a 2x2 max pool)
VGG_STAGES: dict[int, list[list[int]]] = {
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}

ORDERS = ("conv_norm_act", "conv_act_norm")


def _conv(cin: int, cout: int, kernel_size: int) -> nn.Conv2d:
    """A 'same'-padded conv with bias (as torchvision's VGG), He-initialised once."""
    conv = nn.utils.skip_init(nn.Conv2d, cin, cout, kernel_size, padding=kernel_size // 2,
                              device=torch.get_default_device())
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return conv


def _stage(cin: int, widths: Sequence[int], kernel_size: int, norm: str, act: str, order: str,
           pool: nn.Module, drop_rate: float) -> nn.Sequential:
    """convs (named so `cam_layer` can point at them), pool, and dropout when drop_rate > 0."""
    convs: list[nn.Module] = []
    for width in widths:
        unit = [_conv(cin, width, kernel_size), make_norm(norm, width), make_act(act)]
        convs += unit if order == "conv_norm_act" else [unit[0], unit[2], unit[1]]
        cin = width
    parts = OrderedDict(convs=nn.Sequential(*convs), pool=pool)
    if drop_rate > 0:
        parts["drop"] = nn.Dropout(drop_rate)
    return nn.Sequential(parts)


class VGG(FERNet):
    """Stages of same-padded convs, each followed by max pooling, then an MLP classifier.

    Args:
        stages: output channels of the convs of each stage, e.g. [[64], [128], [256, 256], ...].
        kernel_size: conv kernel (3 for VGG; 5 for LeNet).
        order: "conv_norm_act" (torchvision) or "conv_act_norm" (report 002).
        pool_kernel, pool_stride: max pooling after each stage (2, 2 for VGG; 3, 2 for AlexNet).
        stage_drop_rate: dropout after each stage's pooling (report 002: 0.5).
        pool_size: adaptive average pooling output side before the MLP (7 for torchvision's VGG).
        hidden: widths of the hidden linear layers (ReLU/act each; dropout `drop_rate` before every later
            linear layer and the head, as torchvision's classifier).
        drop_rate: dropout before each linear layer after the first, including the head.
    """

    def __init__(
        self, *, stages: Sequence[Sequence[int]], in_chans: int = 3, num_classes: int = 1000,
        kernel_size: int = 3, norm: str = "batch", act: str = "relu", order: str = "conv_norm_act",
        pool_kernel: int = 2, pool_stride: int = 2, stage_drop_rate: float = 0.0, pool_size: int = 1,
        hidden: Sequence[int] = (), drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("order", order, ORDERS)
        check_rate(stage_drop_rate=stage_drop_rate, drop_rate=drop_rate)
        check_positive(kernel_size=kernel_size, pool_size=pool_size,
                       **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
        if not stages or not all(stages):
            raise FerlabError(f"model argument stages={[list(s) for s in stages]}: every stage needs a conv")
        blocks, cin = [], in_chans
        for widths in stages:
            pool = nn.MaxPool2d(pool_kernel, pool_stride)
            blocks.append(_stage(cin, widths, kernel_size, norm, act, order, pool, stage_drop_rate))
            cin = widths[-1]
        self.stages = nn.Sequential(*blocks)
        self.pool_size = pool_size
        mlp, width = [], cin * pool_size**2
        for i, h in enumerate(hidden):
            mlp += ([nn.Dropout(drop_rate)] if i > 0 else []) + [linear(width, h, std=0.01), make_act(act)]
            width = h
        self.mlp = nn.Sequential(*mlp)
        self.init_head(width, num_classes, drop_rate)
        self.set_cam_layer(self.stages[-1].convs)  # before the last pooling: 3x3 at 48x48 input
        self.feature_map_channels = cin

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        x = self.stages(x)  # (B, C_last, H / 2**stages, W / 2**stages) for 2x2 pooling
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, self.pool_size), 1)
        return self.mlp(x)

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C_last, h, w), the cam_layer's output
        for stage in self.stages[:-1]:
            x = stage(x)
        return self.stages[-1].convs(x)

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, C_last, h, w) -> (B, num_features)
        for name, module in self.stages[-1].named_children():  # the last stage's pooling (and dropout)
            if name != "convs":
                fmap = module(fmap)
        return self.mlp(torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, self.pool_size), 1))


def _torchvision_vgg(depth: int, norm: str, doc: str):
    """Register `vgg<depth>[_bn]`: torchvision's layout (3x3 convs, 2x2 max pools, 7x7 pooled, 4096-4096 MLP)."""
    suffix = "_bn" if norm == "batch" else ""

    def build(*, in_chans: int = 3, num_classes: int = 1000, pretrained: str | None = None, act: str = "relu",
              pool_size: int = 7, hidden: Sequence[int] = (4096, 4096), drop_rate: float = 0.5) -> VGG:
        net = VGG(stages=VGG_STAGES[depth], in_chans=in_chans, num_classes=num_classes, norm=norm, act=act,
                  pool_size=pool_size, hidden=hidden, drop_rate=drop_rate)
        weights = f"VGG{depth}{suffix.upper()}_Weights.IMAGENET1K_V1"
        return load_pretrained(net, pretrained, imagenet=weights, names=vgg_names)

    build.__name__ = build.__qualname__ = f"vgg{depth}{suffix}"
    build.__doc__ = doc
    return register_model(build)


vgg11 = _torchvision_vgg(11, "none", "VGG-11 (configuration A), no batch norm; torchvision's parameter count.")
vgg11_bn = _torchvision_vgg(11, "batch", "VGG-11 with batch norm.")
vgg13 = _torchvision_vgg(13, "none", "VGG-13 (configuration B), no batch norm.")
vgg13_bn = _torchvision_vgg(13, "batch", "VGG-13 with batch norm.")
vgg16 = _torchvision_vgg(16, "none", "VGG-16 (configuration D), no batch norm.")
vgg16_bn = _torchvision_vgg(16, "batch", "VGG-16 with batch norm.")
vgg19 = _torchvision_vgg(19, "none", "VGG-19 (configuration E), no batch norm.")
vgg19_bn = _torchvision_vgg(19, "batch", "VGG-19 with batch norm: 143,678,248 parameters with 3 channels and 1000 classes.")


@register_model
def vgg_fer(*, in_chans: int = 1, num_classes: int = 7, pretrained: str | None = None,
            channels: Sequence[int] = (64, 128, 256, 512, 512),
            convs_per_stage: int = 3, stage_drop_rate: float = 0.5, hidden: Sequence[int] = (4096, 4096),
            drop_rate: float = 0.5, norm: str = "batch", act: str = "relu") -> VGG:
    """Report 002's network: 5 stages of 3 x (conv3x3-ReLU-BN), 2x2 max pool, Dropout(0.5); its VGG code's
    head (512 -> 4096 -> 4096 -> classes) on the globally pooled features."""
    check_positive(convs_per_stage=convs_per_stage)
    net = VGG(stages=[[c] * convs_per_stage for c in channels], in_chans=in_chans, num_classes=num_classes,
              norm=norm, act=act, order="conv_act_norm", stage_drop_rate=stage_drop_rate, pool_size=1,
              hidden=hidden, drop_rate=drop_rate)
    return load_pretrained(net, pretrained)  # no torchvision twin: a file of its own names


@register_model
def vgg19_fer48(*, in_chans: int = 1, num_classes: int = 7, pretrained: str | None = None, drop_rate: float = 0.5,
                norm: str = "batch", act: str = "relu") -> VGG:
    """VGG-19 convs with BN for 48x48 input: five poolings leave 1x1x512, then dropout and a linear head.
    pretrained=imagenet loads VGG-19-BN's convs (its classifier layers have no place here)."""
    net = VGG(stages=VGG_STAGES[19], in_chans=in_chans, num_classes=num_classes, norm=norm, act=act,
              pool_size=1, drop_rate=drop_rate)
    return load_pretrained(net, pretrained, imagenet="VGG19_BN_Weights.IMAGENET1K_V1", names=vgg_names)


@register_model
def vgg13_barsoum(*, in_chans: int = 1, num_classes: int = 8, pretrained: str | None = None,
                  stages: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256, 256), (256, 256, 256)),
                  stage_drop_rate: float = 0.25, pool_size: int = 4, hidden: Sequence[int] = (1024, 1024),
                  drop_rate: float = 0.5, norm: str = "none", act: str = "relu") -> VGG:
    """The FER+ reference network (Barsoum et al. 2016, arXiv 1608.01041; microsoft/FERPlus `VGG13`) for 64x64:
    3x3 conv stages 64,64 | 128,128 | 256x3 | 256x3, each closed by a 2x2 max pool and dropout 0.25, then
    FC 1024, FC 1024 with dropout 0.5 and the linear head. Four poolings leave 4x4 at 64x64 (pool_size 4: identity)."""
    net = VGG(stages=stages, in_chans=in_chans, num_classes=num_classes, norm=norm, act=act,
              stage_drop_rate=stage_drop_rate, pool_size=pool_size, hidden=hidden, drop_rate=drop_rate)
    return load_pretrained(net, pretrained, names=vgg_names)


@register_model
def vgg_khaireddin(*, in_chans: int = 1, num_classes: int = 7, pretrained: str | None = None,
                   stages: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256), (512, 512)),
                   pool_size: int = 2, hidden: Sequence[int] = (4096, 4096), drop_rate: float = 0.2,
                   norm: str = "batch", act: str = "relu") -> VGG:
    """Khaireddin & Chen's VGGNet (arXiv 2105.03588, usef-kh/fer): four stages of two conv3x3-BN-ReLU and a 2x2
    max pool (40x40 crops -> 2x2x512), FC 4096, FC 4096 and the head, dropout 0.2 after each hidden FC (their
    relu(drop(fc(x))) equals dropout after the activation)."""
    net = VGG(stages=stages, in_chans=in_chans, num_classes=num_classes, norm=norm, act=act, pool_size=pool_size,
              hidden=hidden, drop_rate=drop_rate)
    return load_pretrained(net, pretrained, names=vgg_names)
