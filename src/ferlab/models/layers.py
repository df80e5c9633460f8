"""Blocks shared by the model families: norm and activation registries, channel attention, feature fusion.

Every model takes `norm` (a key of NORMS) and `act` (a key of ACTS); an unknown name is a `FerlabError`
naming the argument, so `ferlab train model.norm=bn` fails with one clear line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "none": lambda channels: nn.Identity(),
}

ACTS: dict[str, Callable[[bool], nn.Module]] = {
    "relu": lambda inplace: nn.ReLU(inplace=inplace),
    "leaky_relu": lambda inplace: nn.LeakyReLU(0.1, inplace=inplace),
    "elu": lambda inplace: nn.ELU(inplace=inplace),
    "gelu": lambda inplace: nn.GELU(),
    "silu": lambda inplace: nn.SiLU(inplace=inplace),
    "tanh": lambda inplace: nn.Tanh(),
}


def check_choice(arg: str, value: object, choices: Sequence[str] | dict) -> None:
    """Raise a FerlabError naming the argument when `value` is not one of `choices`."""
    if value not in choices:
        raise FerlabError(f"model argument {arg}={value!r} is not one of: {', '.join(sorted(choices))}")


def make_norm(norm: str, channels: int) -> nn.Module:
    """2-d normalization over `channels` ("batch") or nothing ("none")."""
    check_choice("norm", norm, NORMS)
    return NORMS[norm](channels)


def make_act(act: str, inplace: bool = True) -> nn.Module:
    """An activation module by name (see ACTS)."""
    check_choice("act", act, ACTS)
    return ACTS[act](inplace)


def make_stem(kind: str, in_chans: int, width: int, norm: str = "batch", act: str = "relu") -> nn.Sequential:
    """The layers before the first stage (ResNet, CliqueNet); convs have a bias only without normalization.

    `imagenet`: 7x7/2 conv, norm, act, 3x3/2 max pool (maps 4x smaller); `fer`: the same with a 3x3/2 conv
    (report 004, 48 -> 12); `small`: 3x3/1 conv, norm, act (full resolution); `cifar`: one bare 3x3/1 conv
    (CliqueNet's CIFAR net, whose blocks begin with norm-act).
    """
    bias = norm == "none"

    def conv_norm_act(kernel: int, stride: int) -> list[nn.Module]:
        conv = nn.Conv2d(in_chans, width, kernel, stride, kernel // 2, bias=bias)
        return [conv, make_norm(norm, width), make_act(act)]

    stems = {
        "imagenet": lambda: [*conv_norm_act(7, 2), nn.MaxPool2d(3, 2, 1)],
        "fer": lambda: [*conv_norm_act(3, 2), nn.MaxPool2d(3, 2, 1)],
        "small": lambda: conv_norm_act(3, 1),
        "cifar": lambda: conv_norm_act(3, 1)[:1],
    }
    check_choice("stem", kind, stems)
    return nn.Sequential(*stems[kind]())


def linear(cin: int, cout: int, std: float | None = None) -> nn.Linear:
    """nn.Linear initialised once: N(0, std) weights, zero bias when `std` is given, else PyTorch's default.

    Skipping the default kaiming_uniform_ before re-initialising saves ~1.5 s on VGG's 25088x4096 layer.
    """
    if std is None:
        return nn.Linear(cin, cout)
    layer = nn.utils.skip_init(nn.Linear, cin, cout, device=torch.get_default_device())
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.zeros_(layer.bias)
    return layer


def check_positive(**values: float) -> None:
    """Raise a FerlabError for any size argument that is not a positive number."""
    for name, value in values.items():
        if not value > 0:
            raise FerlabError(f"model argument {name}={value!r} must be positive")


def check_rate(**rates: float) -> None:
    """Raise a FerlabError for any dropout rate outside [0, 1)."""
    for name, rate in rates.items():
        if not 0.0 <= float(rate) < 1.0:
            raise FerlabError(f"model argument {name}={rate!r} must be a dropout rate in [0, 1)")


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation style gate: global pool, FC C/reduction, ReLU, FC C, sigmoid, scale."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))  # (B, C)
        return x * gate[:, :, None, None]


FUSIONS = ("none", "concat", "weighted")


class FeatureFusion(nn.Module):
    """Pool feature maps of several stages and fuse them into one embedding.

    Args:
        channels: channels of each fused map, shallowest first (the last one is the deepest stage).
        mode: "none" keeps only the last map; "concat" concatenates the pooled maps (sum of channels);
            "weighted" projects each pooled map to the last map's width with a linear layer and takes a
            softmax-weighted average with learned weights (report 001, 4.6.1), starting from equal weights.
    """

    def __init__(self, channels: Sequence[int], mode: str = "none") -> None:
        super().__init__()
        check_choice("fusion", mode, FUSIONS)
        self.mode, width = mode, channels[-1]
        self.num_features = sum(channels) if mode == "concat" else width
        if mode == "weighted":
            self.proj = nn.ModuleList(nn.Identity() if c == width else nn.Linear(c, width) for c in channels)
            self.logits = nn.Parameter(torch.zeros(len(channels)))

    def forward(self, maps: Sequence[Tensor]) -> Tensor:  # [(B, C_i, H_i, W_i)] -> (B, num_features)
        if self.mode == "none":
            return maps[-1].mean((2, 3))
        pooled = [m.mean((2, 3)) for m in maps]
        if self.mode == "concat":
            return torch.cat(pooled, 1)
        stacked = torch.stack([p(v) for p, v in zip(self.proj, pooled, strict=True)], 0)  # (S, B, C)
        return (torch.softmax(self.logits, 0)[:, None, None] * stacked).sum(0)
