"""Small plain CNNs from the reports, as arguments of the plain conv-stack class in vgg.py.

- `lenet7` (report 004): LeNet with one more conv+pool stage and one more fully connected layer:
  three 5x5 conv + 2x2 max-pool stages, then three linear layers (two hidden + the head).
- `alexnet_fer` (report 002's "AlexNet-like" try): 3x3 convs 64 | 128 | 256-256-128, each stage closed by a
  3x3/2 max pool (48 -> 23 -> 11 -> 5), then an AlexNet-style dropout MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

from ferlab.models.pretrained import load_pretrained
from ferlab.models.registry import register_model
from ferlab.models.vgg import VGG


@register_model
def lenet7(*, in_chans: int = 1, num_classes: int = 8, pretrained: str | None = None,
           channels: Sequence[int] = (32, 64, 128), kernel_size: int = 5, pool_size: int = 6,
           hidden: Sequence[int] = (512, 256), drop_rate: float = 0.5, norm: str = "none", act: str = "relu") -> VGG:
    """LeNet-7: conv-act-pool x 3 (48 -> 6), pooled to `pool_size`, linear-act x 2 (`hidden`), linear head."""
    net = VGG(stages=[[c] for c in channels], in_chans=in_chans, num_classes=num_classes,
              kernel_size=kernel_size, norm=norm, act=act, pool_size=pool_size, hidden=hidden,
              drop_rate=drop_rate)
    return load_pretrained(net, pretrained)


@register_model
def alexnet_fer(*, in_chans: int = 1, num_classes: int = 7, pretrained: str | None = None,
                stages: Sequence[Sequence[int]] = ((64,), (128,), (256, 256, 128)), pool_size: int = 5,
                hidden: Sequence[int] = (1024, 1024), drop_rate: float = 0.5, norm: str = "none",
                act: str = "relu") -> VGG:
    """AlexNet-style: 3x3 conv stages closed by 3x3/2 max pools, pooled to `pool_size`, dropout MLP, head."""
    net = VGG(stages=stages, in_chans=in_chans, num_classes=num_classes, kernel_size=3, norm=norm, act=act,
              pool_kernel=3, pool_stride=2, pool_size=pool_size, hidden=hidden, drop_rate=drop_rate)
    return load_pretrained(net, pretrained)
