"""MobileFaceNet (Chen et al. 2018, arXiv 1804.07573) in the layout of TreB1eN/InsightFace_Pytorch's
`model_mobilefacenet.pth`, the one POSTER and POSTER++ load (their `mobilefacenet_model_best.pth.tar`, trained
for 68 landmarks, keeps the GDC head under `output_layer` with a 136-wide "embedding").

Body (names as in the file): a 3x3/2 conv and a depthwise 3x3 conv (64 ch), then inverted-residual stages of
(1x1 expand, depthwise 3x3, 1x1 linear project) blocks `conv_23` / `conv_3` (64) / `conv_34` / `conv_4` (128) /
`conv_45` / `conv_5` (128), and the 1x1 conv `conv_6_sep` to 512 channels: a 7x7x512 map at 112x112, 16x smaller
than the input. The `neck` is global average pooling (the default), or the GDC embedding (global depthwise 7x7 conv
+ BN, flatten, linear without bias, BN1d) on the map adaptively average-pooled to 7x7 (the identity at 112 px); its
BatchNorm1d needs batches of more than a few.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from ferlab.models.base import FERNet
from ferlab.models.face_weights import mobilefacenet_names
from ferlab.models.layers import check_choice, check_positive
from ferlab.models.pretrained import load_pretrained
from ferlab.models.registry import register_model


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> PReLU (insightface `Conv_block`); `linear=True` leaves out the PReLU (`Linear_block`)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
                 linear: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.Identity() if linear else nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn(self.conv(x)))


class DepthWise(nn.Module):
    """1x1 expand to `mid` -> depthwise 3x3 (stride) -> 1x1 linear project; + x when `residual` (`Depth_Wise`)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1, residual: bool = False) -> None:
        super().__init__()
        self.conv = ConvBlock(cin, mid)
        self.conv_dw = ConvBlock(mid, mid, 3, stride, 1, groups=mid)
        self.project = ConvBlock(mid, cout, linear=True)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """`blocks` residual DepthWise blocks of width `channels` (`Residual`; its Sequential is called `model`)."""

    def __init__(self, channels: int, blocks: int, mid: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*[DepthWise(channels, channels, mid, residual=True) for _ in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def gdc_neck(embedding_size: int) -> nn.Sequential:
    """The GDC embedding on a (B, 512, 7, 7) map: depthwise 7x7 conv + BN, flatten, linear (no bias), BN1d."""
    return nn.Sequential(ConvBlock(512, 512, 7, groups=512, linear=True), nn.Flatten(1),
                         nn.Linear(512, embedding_size, bias=False), nn.BatchNorm1d(embedding_size))


class MobileFaceNet(FERNet):
    """MobileFaceNet for any input channels, class count and size (0.91 M parameters before the
    head; 1.20 M with the 512-d GDC neck).

    Args:
        neck: "avg" (global average pooling; num_features = 512) or "embedding" (the GDC head, `embedding_size`
            wide, after pooling the map to 7x7).
        embedding_size: width of the GDC embedding (512 in InsightFace_Pytorch, 136 in POSTER's landmark net).
        drop_rate: dropout on the pooled features before the head.
    """

    def __init__(self, *, in_chans: int = 3, num_classes: int = 1000, neck: str = "avg",
                 embedding_size: int = 512, drop_rate: float = 0.0) -> None:
        super().__init__()
        check_choice("neck", neck, ("embedding", "avg"))
        check_positive(embedding_size=embedding_size)
        self.body = nn.Sequential(OrderedDict(
            conv1=ConvBlock(in_chans, 64, 3, 2, 1),
            conv2_dw=ConvBlock(64, 64, 3, 1, 1, groups=64),
            conv_23=DepthWise(64, 64, 128, stride=2),
            conv_3=Residual(64, 4, 128),
            conv_34=DepthWise(64, 128, 256, stride=2),
            conv_4=Residual(128, 6, 256),
            conv_45=DepthWise(128, 128, 512, stride=2),
            conv_5=Residual(128, 2, 256),
            conv_6_sep=ConvBlock(128, 512),
        ))
        self.feature_map_channels = 512
        if neck == "embedding":
            self.neck_pool: nn.Module = nn.AdaptiveAvgPool2d(7)  # identity on the 7x7 map of a 112 px face
            self.neck: nn.Module = gdc_neck(embedding_size)
        else:
            self.neck_pool, self.neck = nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        self.init_head(embedding_size if neck == "embedding" else 512, num_classes, drop_rate)
        self.set_cam_layer(self.body)

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 512, H/16, W/16)
        return self.body(x)

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, 512, h, w) -> (B, num_features)
        return self.neck(self.neck_pool(fmap))

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        return self.pool_features(self.forward_feature_map(x))


@register_model
def mobilefacenet(*, in_chans: int = 3, num_classes: int = 1000, pretrained: str | None = None,
                  neck: str = "avg", embedding_size: int = 512, drop_rate: float = 0.0) -> MobileFaceNet:
    """MobileFaceNet, InsightFace_Pytorch's layout. `pretrained`: null or a file in that layout
    (model_mobilefacenet.pth, or POSTER's mobilefacenet_model_best.pth.tar; see models.face_weights)."""
    net = MobileFaceNet(in_chans=in_chans, num_classes=num_classes, neck=neck, embedding_size=embedding_size,
                        drop_rate=drop_rate)
    return load_pretrained(net, pretrained, names=mobilefacenet_names)
