"""mini-Xception (Arriaga, Valdenegro-Toro, Plöger 2017, "Real-time Convolutional Neural Networks for Emotion
and Gender Classification"), layer for layer as `mini_XCEPTION` in oarriaga/face_classification src/models/cnn.py.

Stem: two valid 3x3 convs (8 channels) with batch norm and ReLU. Then four residual modules (16, 32, 64, 128):
depthwise-separable 3x3 conv, BN, ReLU, separable 3x3 conv, BN, 3x3/2 max pool ('same'), plus a 1x1/2 conv + BN
shortcut. Keras ends with a 3x3 'same' conv to the classes, global average pooling and softmax. 56,951 trainable
parameters for 7 classes (Keras' summary says 58,423: it counts the 1,472 batch-norm statistics too); the paper
trains at 48x48, the published FER2013 weights take 1x64x64.

Both ends are linear, so they become FERNet's embedding and linear head without changing a single output:
GAP(conv3x3(x) + b) = head(features) where features are the means, over the output grid, of the nine views of
the zero-padded map that the kernel's nine taps see (B, C, 3, 3) flattened to (B, 9C), and head.weight is the
conv kernel (K, C, 3, 3) flattened to (K, 9C). Keras' 'same' max pooling pads an odd total on the bottom/right,
which PyTorch's symmetric padding cannot; `SamePadMaxPool` pads exactly as Keras does. Batch norm keeps Keras'
epsilon (1e-3) and momentum (0.99, i.e. PyTorch's 0.01), so converted weights (ferlab.models.keras_h5)
reproduce the Keras model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ferlab.errors import FerlabError
from ferlab.models.base import FERNet
from ferlab.models.layers import NORMS, check_choice, check_positive, make_act
from ferlab.models.pretrained import load_pretrained
from ferlab.models.registry import register_model

HEAD_KERNEL = 3  # Keras' final Conv2D(num_classes, (3, 3), padding='same')


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same': out = ceil(size / stride), the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePadMaxPool(nn.Module):
    """Keras' MaxPooling2D(kernel, stride, padding='same'): padded pixels never win (-inf)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, ceil(H / s), ceil(W / s))
        # plain ints: exports trace the pads as constants (a traced floor division of sizes would truncate)
        top, bottom = same_pads(int(x.shape[-2]), self.kernel_size, self.stride)
        left, right = same_pads(int(x.shape[-1]), self.kernel_size, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def batch_norm(norm: str, channels: int, eps: float, momentum: float) -> nn.Module:
    """Batch norm with Keras' statistics settings, or nothing (norm=none)."""
    check_choice("norm", norm, NORMS)
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum) if norm == "batch" else nn.Identity()


def separable(cin: int, cout: int, bias: bool) -> nn.Sequential:
    """Keras' SeparableConv2D(cout, 3, padding='same'): depthwise 3x3 (0), then pointwise 1x1 (1)."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=bias))


class XceptionModule(nn.Module):
    """body: sep conv, BN, act, sep conv, BN, 3x3/2 'same' max pool; plus shortcut: 1x1/2 conv, BN."""

    def __init__(self, cin: int, cout: int, norm: str, act: str, eps: float, momentum: float) -> None:
        super().__init__()
        bias = norm == "none"
        # a 1x1/2 'same' conv never pads (ceil(n/2) - 1) * 2 + 1 <= n), so PyTorch's padding=0 is Keras'
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=bias),
                                      batch_norm(norm, cout, eps, momentum))
        self.body = nn.Sequential(
            separable(cin, cout, bias), batch_norm(norm, cout, eps, momentum), make_act(act),
            separable(cout, cout, bias), batch_norm(norm, cout, eps, momentum), SamePadMaxPool(3, 2),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, cin, H, W) -> (B, cout, ceil(H / 2), ceil(W / 2))
        return self.body(x) + self.shortcut(x)


class MiniXception(FERNet):
    """Stem (two valid 3x3 convs), residual separable-conv modules, the 3x3-conv + GAP classifier as a linear head.

    Args:
        stem_width: channels of the two stem convs (8).
        widths: output channels of the residual modules (16, 32, 64, 128); each halves the map.
        drop_rate: dropout on the (B, 9 * widths[-1]) embedding before the head (the original has none).
        bn_eps, bn_momentum: batch norm settings; Keras' defaults (1e-3 and 0.99, PyTorch's 0.01).
    """

    def __init__(
        self, *, in_chans: int = 1, num_classes: int = 7, stem_width: int = 8,
        widths: Sequence[int] = (16, 32, 64, 128), drop_rate: float = 0.0, norm: str = "batch",
        act: str = "relu", bn_eps: float = 1e-3, bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if not widths:
            raise FerlabError("model argument widths=[] needs at least one residual module width")
        check_positive(stem_width=stem_width, bn_eps=bn_eps, **{f"widths[{i}]": w for i, w in enumerate(widths)})
        bias = norm == "none"
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, bias=bias), batch_norm(norm, stem_width, bn_eps, bn_momentum),
            make_act(act),
            nn.Conv2d(stem_width, stem_width, 3, bias=bias), batch_norm(norm, stem_width, bn_eps, bn_momentum),
            make_act(act),
        )
        cins = [stem_width, *widths[:-1]]
        self.blocks = nn.Sequential(*(XceptionModule(cin, cout, norm, act, bn_eps, bn_momentum)
                                      for cin, cout in zip(cins, widths, strict=True)))
        self.init_head(widths[-1] * HEAD_KERNEL**2, num_classes, drop_rate)
        self.set_cam_layer(self.blocks)  # (B, 128, 3, 3) at 48x48, (B, 128, 4, 4) at 64x64
        self.feature_map_channels = widths[-1]  # the training methods' surface (ferlab.models.base)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 9 * widths[-1])
        return self.pool_features(self.forward_feature_map(x))

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, widths[-1], h, w): the last module's
        return self.blocks(self.stem(x))

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, C', h, w) -> (B, 9 * C'): the classifier conv's 9 views
        pad = HEAD_KERNEL // 2
        x = F.pad(fmap, (pad, pad, pad, pad))  # (B, C', h + 2, w + 2), zeros as 'same'
        # tap u of the kernel sees padded rows u .. u + h - 1 (slices free of the map size: exports stay static)
        taps = [slice(u, u - 2 * pad or None) for u in range(HEAD_KERNEL)]
        views = torch.stack([x[:, :, rows, cols].mean((2, 3)) for rows in taps for cols in taps], 2)  # (B, C', 9)
        return views.flatten(1)  # index c * 9 + u * 3 + v, as the kernel (K, C', 3, 3) flattened


@register_model
def mini_xception(*, in_chans: int = 1, num_classes: int = 7, pretrained: str | None = None, stem_width: int = 8,
                  widths: Sequence[int] = (16, 32, 64, 128), drop_rate: float = 0.0, norm: str = "batch",
                  act: str = "relu", bn_eps: float = 1e-3, bn_momentum: float = 0.01) -> MiniXception:
    """mini-Xception; `pretrained`: a state-dict file of this network or a Keras .hdf5/.h5 model of mini_XCEPTION."""
    net = MiniXception(in_chans=in_chans, num_classes=num_classes, stem_width=stem_width, widths=widths,
                       drop_rate=drop_rate, norm=norm, act=act, bn_eps=bn_eps, bn_momentum=bn_momentum)
    if pretrained is not None and str(pretrained).lower().endswith((".hdf5", ".h5")):
        from ferlab.models.keras_h5 import load_keras_weights

        return load_keras_weights(net, pretrained)
    return load_pretrained(net, pretrained)
