"""CliqueNet (Yang et al., "Convolutional Neural Networks with Alternately Updated Clique", CVPR 2018),
as report 004 uses it.

Inside a block every pair of layers is connected both ways. Stage I builds each layer from the block input
and all earlier layers; stage II re-computes each layer from the latest versions of all other layers with
the same weights (W_ji, the j -> i filters, are shared by both stages). A block's feature is {input, stage II
layers}; its stage II layers go through a transition (norm-act-conv1x1-dropout, optional channel attention,
2x2 average pool) to the next block, and every block's feature is pooled into the multi-scale embedding.

Layer order (pre-activation norm-act-conv, one norm per use, no conv bias) follows the authors' code, which is
what makes the CIFAR configuration 935,994 parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.models.base import FERNet
from ferlab.models.layers import (
    ChannelAttention,
    check_positive,
    check_rate,
    make_act,
    make_norm,
    make_stem,
)
from ferlab.models.pretrained import load_pretrained
from ferlab.models.registry import register_model


def _weight(cout: int, cin: int, kernel: int) -> nn.Parameter:
    w = torch.empty(cout, cin, kernel, kernel)
    if w.numel():  # the first layer's peer weights are empty without stage II
        nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
    return nn.Parameter(w)


class CliqueBlock(nn.Module):
    """`layers` layers of `channels` maps each; returns (block feature, stage II layers).

    Stage I:  x_i = f(cat(x_0, x_1 .. x_{i-1}); [W_0i, W_1i .. W_(i-1)i])
    Stage II: x_i = f(cat(x_j for j != i, latest versions); [W_ji for j != i]), repeated `loops` times.
    f = norm-act-conv (kxk; with `bottleneck` 1x1 then norm-act-conv3x3) - dropout, each conv followed by it.
    """

    def __init__(self, cin: int, *, layers: int, channels: int, loops: int = 1, bottleneck: bool = False,
                 drop_rate: float = 0.0, norm: str = "batch", act: str = "relu") -> None:
        super().__init__()
        k, n, kernel = channels, layers, 1 if bottleneck else 3
        self.layers, self.channels, self.loops, self.bottleneck = n, k, loops, bottleneck
        self.w_in = nn.ParameterList(_weight(k, cin, kernel) for _ in range(n))  # W_0i
        # W_ji for j != i in ascending j; stage I uses the j < i part, stage II all of it
        self.w_peer = nn.ParameterList(_weight(k, (n - 1 if loops else i) * k, kernel) for i in range(n))
        passes = 1 + loops  # stage I, then each stage II loop; pass p of layer i uses norms[p * n + i]
        self.norms = nn.ModuleList(make_norm(norm, cin + i * k) for i in range(n))
        self.norms.extend(make_norm(norm, (n - 1) * k) for _ in range(loops * n))
        if bottleneck:
            self.w_mid = nn.ParameterList(_weight(k, k, 3) for _ in range(n))
            self.mid_norms = nn.ModuleList(make_norm(norm, k) for _ in range(passes * n))
        self.act, self.drop = make_act(act, inplace=False), nn.Dropout(drop_rate)

    def _unit(self, x: Tensor, weight: Tensor, p: int, i: int) -> Tensor:  # (B, C_in, h, w) -> (B, k, h, w)
        idx = p * self.layers + i
        pad = weight.shape[-1] // 2
        y = self.drop(nn.functional.conv2d(self.act(self.norms[idx](x)), weight, padding=pad))
        if self.bottleneck:
            y = self.drop(nn.functional.conv2d(self.act(self.mid_norms[idx](y)), self.w_mid[i], padding=1))
        return y

    def forward(self, x0: Tensor) -> tuple[Tensor, Tensor]:  # (B,C,h,w) -> (B,C+n*k,h,w), (B,n*k,h,w)
        k, outs = self.channels, []
        for i in range(self.layers):  # stage I
            weight = torch.cat([self.w_in[i], self.w_peer[i][:, : i * k]], 1)
            outs.append(self._unit(torch.cat([x0, *outs], 1), weight, 0, i))
        for p in range(1, self.loops + 1):  # stage II, in place: later layers see the new versions
            for i in range(self.layers):
                outs[i] = self._unit(torch.cat(outs[:i] + outs[i + 1:], 1), self.w_peer[i], p, i)
        transit = torch.cat(outs, 1)
        return torch.cat([x0, transit], 1), transit


def _transition(channels: int, attention: bool, drop_rate: float, norm: str, act: str) -> nn.Sequential:
    """norm-act-conv1x1-dropout, channel attention (pool, FC C/2, ReLU, FC C, sigmoid, scale), avg pool 2."""
    return nn.Sequential(
        make_norm(norm, channels), make_act(act, inplace=False), nn.Conv2d(channels, channels, 1, bias=False),
        nn.Dropout(drop_rate), ChannelAttention(channels, 2) if attention else nn.Identity(), nn.AvgPool2d(2),
    )


def _exit(channels: int, compression: bool, drop_rate: float, norm: str,
          act: str) -> tuple[nn.Sequential, int]:
    """A block feature on its way to the pooled embedding: [norm-act-conv1x1 to C/2-dropout], norm-act."""
    parts: list[nn.Module] = []
    if compression:
        parts = [make_norm(norm, channels), make_act(act, inplace=False),
                 nn.Conv2d(channels, channels // 2, 1, bias=False), nn.Dropout(drop_rate)]
        channels //= 2
    return nn.Sequential(*parts, make_norm(norm, channels), make_act(act, inplace=False)), channels


class CliqueNet(FERNet):
    """Stem, `blocks` clique blocks joined by transitions, multi-scale head (every block's feature pooled).

    Args:
        blocks, layers, channels: clique blocks, layers per block, channels per layer (k).
        stem, stem_channels: see layers.make_stem ("fer", "cifar", "imagenet", "small"); channels entering the first block.
        loops: stage II passes (0 = stage I only, "CliqueNet I+I").
        attention: channel attention in the transitions. bottleneck: 1x1 clique convs + a 3x3 conv per layer.
        compression: halve each block feature with a 1x1 conv before pooling it.
        block_drop_rate: dropout after every conv in blocks and transitions. drop_rate: before the head.
    """

    def __init__(
        self, *, in_chans: int = 3, num_classes: int = 10, blocks: int = 3, layers: int = 5,
        channels: int = 36, stem: str = "fer", stem_channels: int = 64, loops: int = 1,
        attention: bool = True, bottleneck: bool = False, compression: bool = False,
        block_drop_rate: float = 0.0, drop_rate: float = 0.0, norm: str = "batch", act: str = "relu",
    ) -> None:
        super().__init__()
        check_positive(blocks=blocks, channels=channels, stem_channels=stem_channels)
        check_rate(block_drop_rate=block_drop_rate)
        if layers < 2 or loops < 0:
            raise FerlabError(f"model arguments layers={layers}, loops={loops}: need layers >= 2, loops >= 0")
        self.stem = make_stem(stem, in_chans, stem_channels, norm, act)
        kw = dict(norm=norm, act=act)
        self.blocks, self.transitions, self.exits = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin, num_features = stem_channels, 0
        for b in range(blocks):
            self.blocks.append(CliqueBlock(cin, layers=layers, channels=channels, loops=loops,
                                           bottleneck=bottleneck, drop_rate=block_drop_rate, **kw))
            exit_, width = _exit(cin + layers * channels, compression, block_drop_rate, **kw)
            self.exits.append(exit_)
            num_features += width
            cin = layers * channels
            if b < blocks - 1:
                self.transitions.append(_transition(cin, attention, block_drop_rate, **kw))
        self.init_head(num_features, num_classes, drop_rate)
        self.set_cam_layer(self.exits[-1])  # last block feature after norm-act: (B, C, 3, 3) at 48, fer stem
        self.no_feature_map_reason = "its multi-scale embedding pools every block's feature"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        x = self.stem(x)
        pooled = []
        for b, block in enumerate(self.blocks):
            feature, transit = block(x)  # (B, C_b + layers*k, h, w), (B, layers*k, h, w)
            pooled.append(self.exits[b](feature).mean((2, 3)))
            if b < len(self.transitions):
                x = self.transitions[b](transit)  # (B, layers*k, h/2, w/2)
        return torch.cat(pooled, 1)


@register_model
def cliquenet(*, in_chans: int = 1, num_classes: int = 8, pretrained: str | None = None, blocks: int = 3,
              layers: int = 5, channels: int = 36, stem: str = "fer", stem_channels: int = 64, loops: int = 1,
              attention: bool = True, bottleneck: bool = False, compression: bool = False,
              block_drop_rate: float = 0.05, drop_rate: float = 0.0, norm: str = "batch",
              act: str = "relu") -> CliqueNet:
    """Report 004's CliqueNet at defaults: fer stem, 3 blocks x 5 layers x 36 channels, attentional
    transitions, dropout 0.05 (its keep_prob 0.95). The authors' CIFAR net: stem="cifar", layers=4,
    attention=False, in_chans=3, num_classes=10."""
    net = CliqueNet(in_chans=in_chans, num_classes=num_classes, blocks=blocks, layers=layers,
                    channels=channels, stem=stem, stem_channels=stem_channels, loops=loops,
                    attention=attention, bottleneck=bottleneck, compression=compression,
                    block_drop_rate=block_drop_rate, drop_rate=drop_rate, norm=norm, act=act)
    return load_pretrained(net, pretrained)
