"""Distract your Attention Network (Wen et al., Biomimetics 2023, arXiv 2109.07270; github.com/yaoing/DAN,
networks/dan.py, rafdb.py, affectnet.py).

- Feature clustering network: the backbone's last feature map F (B, C, h, w); the affinity loss pulls each image's
  global average of F towards a learned centre of its class and is divided by the centres' spread:
  sum_b ||gap(F_b) - c_{y_b}||^2 / sum_j var_k(c_kj) / B (every other entry of the masked distance matrix counted
  as 1e-12, as the official clamp does).
- Multi-head cross attention: `num_head` heads, each spatial attention (1x1 conv to C/2, then 3x3 + 1x3 + 3x1 convs
  back to C with batch norm, ReLU, summed over channels: a (B, 1, h, w) map that scales F) followed by channel
  attention (global average, FC C -> 32, BN, ReLU, FC -> C, sigmoid, scaling the pooled vector): (B, C) per head.
- Attention fusion: the heads (B, H, C) go through log_softmax across heads (H > 1) and are summed; then FC to the
  classes and BatchNorm1d give the logits. This is the network DAN evaluates (`DANNet`), also at inference.
- Partition loss: log(1 + H / (mean over images and channels of the heads' variance + eps)) pushes the heads apart.

loss = loss(logits, y) + affinity_weight * affinity + partition_weight * partition; both weights 1, num_head 4 as in
the official scripts. The class centres are the method's parameters (trained, checkpointed, in the optimizer), not
part of the inference network. The backbone's own linear head is unused under DAN and frozen.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.methods.base import Gather, Loss, Method, MethodNet, Step, class_ids, require_feature_map
from ferlab.methods.registry import register_method

EPS = sys.float_info.epsilon  # the official partition loss's


class SpatialAttention(nn.Module):
    """x * relu(bn(conv3x3(y)) + bn(conv1x3(y)) + bn(conv3x1(y))).sum(channels), y = bn(conv1x1(x)) at C/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = channels // 2
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid))
        self.conv_3x3 = nn.Sequential(nn.Conv2d(mid, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.conv_1x3 = nn.Sequential(nn.Conv2d(mid, channels, (1, 3), padding=(0, 1)), nn.BatchNorm2d(channels))
        self.conv_3x1 = nn.Sequential(nn.Conv2d(mid, channels, (3, 1), padding=(1, 0)), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:  # (B, C, h, w) -> (B, C, h, w)
        y = self.conv1x1(x)
        y = self.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y))
        return x * y.sum(dim=1, keepdim=True)


class ChannelAttention(nn.Module):
    """Global average (B, C), then gate = sigmoid(FC(ReLU(BN(FC(v))))) and v * gate."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:  # (B, C, h, w) -> (B, C)
        pooled = x.mean((2, 3))
        return pooled * self.attention(pooled)


class CrossAttentionHead(nn.Module):
    """Spatial then channel attention; initialised as the official: convs He (fan out), BN 1/0, FCs N(0, 0.001)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.sa, self.ca = SpatialAttention(channels), ChannelAttention(channels, hidden)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, h, w) -> (B, C)
        return self.ca(self.sa(x))


class DANNet(MethodNet):
    """Body feature map -> `num_head` cross-attention heads -> fusion -> FC -> BatchNorm1d (the logits)."""

    def __init__(self, body: nn.Module, num_head: int = 4, channel_hidden: int = 32) -> None:
        body = require_feature_map(body, "dan")
        super().__init__(body)
        channels = body.feature_map_channels
        body.head.requires_grad_(False)  # DAN classifies the fused heads; DDP must not wait for these gradients
        self.heads = nn.ModuleList(CrossAttentionHead(channels, channel_hidden) for _ in range(num_head))
        self.num_features = channels
        self.head_drop = nn.Dropout(body.drop_rate)
        self.head = nn.Linear(channels, body.num_classes)
        self.head_bn = nn.BatchNorm1d(body.num_classes)

    def attend(self, fmap: Tensor) -> Tensor:  # (B, C, h, w) -> (B, H, C) heads, log-softmaxed across heads
        heads = torch.stack([head(fmap) for head in self.heads], 1)
        return F.log_softmax(heads, dim=1) if heads.shape[1] > 1 else heads  # each channel claimed by some head

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, C, h, w) -> (B, C): the fused heads (DAN's neck)
        return self.attend(fmap).sum(1)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C)
        return self.pool_features(self.forward_feature_map(x))

    def forward_head(self, features: Tensor) -> Tensor:  # (B, C) -> (B, num_classes)
        return self.head_bn(self.head(self.head_drop(features)))


def affinity_loss(features: Tensor, labels: Tensor, centers: Tensor) -> Tensor:
    """The official AffinityLoss on pooled features (B, C), class ids (B,) and centres (K, C)."""
    b, k = len(features), len(centers)
    distmat = features.pow(2).sum(1, keepdim=True).expand(b, k) + centers.pow(2).sum(1, keepdim=True).expand(k, b).t()
    distmat = distmat.addmm(features, centers.t(), beta=1, alpha=-2)  # ||f||^2 + ||c||^2 - 2 f.c, (B, K)
    mask = labels.view(-1, 1) == torch.arange(k, device=labels.device).view(1, -1)
    dist = distmat * mask.float() / centers.var(dim=0).sum()
    return dist.clamp(min=1e-12, max=1e12).sum() / b


def partition_loss(heads: Tensor) -> Tensor:
    """log(1 + H / (mean_{b,c} var_h(heads) + eps)) for heads (B, H, C); 0 with one head."""
    num_head = heads.shape[1]
    if num_head <= 1:
        return heads.new_zeros(())
    return torch.log(1 + num_head / (heads.var(dim=1).mean() + EPS))


@register_method
class DAN(Method):
    """DAN's attention heads (in the inference network), affinity and partition losses (see the module docstring).

    Args:
        num_head: cross-attention heads.
        affinity_weight, partition_weight: weights of the two losses added to the classification loss.
        channel_hidden: width of the channel attention's bottleneck (32 for the official 512 channels).
    """

    terms = ("dan_affinity", "dan_partition")
    wraps = True

    def __init__(self, num_head: int = 4, affinity_weight: float = 1.0, partition_weight: float = 1.0,
                 channel_hidden: int = 32) -> None:
        super().__init__()
        if num_head < 1 or channel_hidden < 1 or affinity_weight < 0 or partition_weight < 0:
            raise FerlabError(f"train_method=dan: num_head >= 1, channel_hidden >= 1 and weights >= 0 expected, got "
                              f"num_head={num_head}, channel_hidden={channel_hidden}, "
                              f"affinity_weight={affinity_weight}, partition_weight={partition_weight}")
        self.num_head, self.channel_hidden = num_head, channel_hidden
        self.affinity_weight, self.partition_weight = affinity_weight, partition_weight

    def wrap(self, net: nn.Module) -> nn.Module:
        wrapped = DANNet(net, self.num_head, self.channel_hidden)
        # (K, C) class centres, N(0, 1) as the official AffinityLoss; a training parameter, not an inference one
        self.centers = nn.Parameter(torch.randn(wrapped.num_classes, wrapped.feature_map_channels))
        return wrapped

    def step(self, net: DANNet, x: Tensor, y: Tensor, loss_fn: Loss, *, epoch: int,
             index: Tensor | None = None, gather: Gather | None = None) -> Step:
        fmap = net.forward_feature_map(x)  # (B, C, h, w)
        heads = net.attend(fmap)  # (B, H, C)
        logits = net.forward_head(heads.sum(1))
        affinity = affinity_loss(fmap.float().mean((2, 3)), class_ids(y), self.centers.float())
        partition = partition_loss(heads.float())
        self.log_terms(len(x), dan_affinity=affinity, dan_partition=partition)
        loss = loss_fn(logits, y) + self.affinity_weight * affinity + self.partition_weight * partition
        return Step(loss, logits, y)
