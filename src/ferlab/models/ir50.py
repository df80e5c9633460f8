"""IR-50/100/152: ArcFace's "improved residual" face-recognition nets in the insightface layout of
TreB1eN/InsightFace_Pytorch (`model_ir_se50.pth`), which POSTER and POSTER++ load as `ir50.pth`.

One class; depth (`num_layers`), squeeze-excitation (`mode=ir_se`) and how many of the four stages are kept
(`num_stages`; POSTER uses three) are arguments. A unit is BN -> 3x3 conv -> PReLU -> 3x3 conv (strided) -> BN
[-> SE], added to a shortcut (a strided 1x1 max pool when the width stays, else a strided 1x1 conv + BN). The stem
is a 3x3/1 conv (+BN, PReLU), so a 112x112 face leaves the fourth stage as a 7x7x512 map. The `neck` is global
average pooling (the default: FER work such as POSTER uses the maps, not the identity embedding), or the insightface
embedding (`output_layer`: BN, dropout, flatten, linear 512*7*7 -> 512, BN1d) on the map adaptively average-pooled
to 7x7 (the identity at 112 px, so other input sizes work too); its BatchNorm1d needs batches of more than a few.
Module names follow the file: `stem` = input_layer, `body.<i>` = body.<i> (every unit, flat), `neck` = output_layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import accumulate

from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.models.base import FERNet
from ferlab.models.face_weights import ir_names
from ferlab.models.layers import check_choice, check_positive, check_rate
from ferlab.models.pretrained import load_pretrained
from ferlab.models.registry import register_model

UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}  # units per stage (insightface get_blocks)
DEPTHS = (64, 128, 256, 512)  # output channels per stage
NECKS = ("embedding", "avg")


class SEModule(nn.Module):
    """Squeeze-excitation with 1x1 convs (no bias), as insightface's `SEModule`."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class IRUnit(nn.Module):
    """insightface's bottleneck_IR (and _SE): res_layer(x) + shortcut_layer(x); the stride is in the second conv."""

    def __init__(self, cin: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)  # strided subsampling, no weights
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        layers = [nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
                  nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
        self.res_layer = nn.Sequential(*layers, *([SEModule(cout)] if se else []))

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def embedding_neck(channels: int, embedding_size: int, drop_rate: float) -> nn.Sequential:
    """insightface's output_layer on a (B, channels, 7, 7) map: BN, dropout, flatten, linear, BN1d."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.Dropout(drop_rate), nn.Flatten(1),
                         nn.Linear(channels * 7 * 7, embedding_size), nn.BatchNorm1d(embedding_size))


class IRNet(FERNet):
    """IR-ResNet (insightface `Backbone`) for any input channels, class count and size.

    Args:
        num_layers: 50, 100 or 152 (units per stage: see UNITS).
        mode: "ir" or "ir_se" (squeeze-excitation in every unit).
        num_stages: keep the first 1-4 stages (POSTER and POSTER++ use 3: a 14x14x256 map at 112 px).
        neck: "avg" (global average pooling; num_features = the last stage's channels) or "embedding"
            (insightface's output_layer, `embedding_size` wide, after pooling the map to 7x7).
        neck_drop_rate: the embedding neck's dropout (insightface `drop_ratio`).
        drop_rate: dropout on the pooled features before the head.
    """

    def __init__(self, *, num_layers: int = 50, mode: str = "ir", num_stages: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, neck: str = "avg", embedding_size: int = 512,
                 neck_drop_rate: float = 0.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        if num_layers not in UNITS:
            raise FerlabError(f"model argument num_layers={num_layers!r} is not one of: 50, 100, 152")
        check_choice("mode", mode, ("ir", "ir_se"))
        check_choice("neck", neck, NECKS)
        check_rate(neck_drop_rate=neck_drop_rate)
        check_positive(embedding_size=embedding_size)
        if not 1 <= num_stages <= 4:
            raise FerlabError(f"model argument num_stages={num_stages} must be in 1..4")
        self.layout_units = UNITS[num_layers]  # the file's stages, kept for the renames of face_weights
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, cin = [], 64
        for n, depth in zip(self.layout_units[:num_stages], DEPTHS, strict=False):
            units += [IRUnit(cin if j == 0 else depth, depth, 2 if j == 0 else 1, mode == "ir_se") for j in range(n)]
            cin = depth
        self.body = nn.Sequential(*units)
        self.feature_map_channels = cin
        if neck == "embedding":
            self.neck_pool: nn.Module = nn.AdaptiveAvgPool2d(7)  # identity on the 7x7 map of a 112 px face
            self.neck: nn.Module = embedding_neck(cin, embedding_size, neck_drop_rate)
        else:
            self.neck_pool, self.neck = nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        self.init_head(embedding_size if neck == "embedding" else cin, num_classes, drop_rate)
        self.set_cam_layer(self.body)

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, feature_map_channels, H/16, W/16)
        return self.body(self.stem(x))

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, C, h, w) -> (B, num_features)
        return self.neck(self.neck_pool(fmap))

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        return self.pool_features(self.forward_feature_map(x))

    def misfit_hint(self, state: Mapping[str, Tensor]) -> str:
        """For a misfit line: 'set model.num_stages=N' when the file (in ferlab's names) ends after stage N."""
        units = 1 + max((int(k.split(".")[1]) for k in state if re.match(r"body\.\d+\.", k)), default=-1)
        ends = list(accumulate(self.layout_units))
        if units < len(self.body) and units in ends:
            return f"the file has {ends.index(units) + 1} stages: set model.num_stages={ends.index(units) + 1}"
        return ""


@register_model
def ir50(*, in_chans: int = 3, num_classes: int = 1000, pretrained: str | None = None, num_layers: int = 50,
         mode: str = "ir", num_stages: int = 4, neck: str = "avg", embedding_size: int = 512,
         neck_drop_rate: float = 0.0, drop_rate: float = 0.0) -> IRNet:
    """IR-50 (insightface layout; 30.7 M parameters before the head, 43.6 M with the embedding neck): `num_layers`
    100/152 and `mode=ir_se` give the other insightface nets. `pretrained`: null or a file in insightface's layout
    (InsightFace_Pytorch's model_ir_se50.pth, POSTER's ir50.pth; see models.face_weights)."""
    net = IRNet(num_layers=num_layers, mode=mode, num_stages=num_stages, in_chans=in_chans, num_classes=num_classes,
                neck=neck, embedding_size=embedding_size, neck_drop_rate=neck_drop_rate, drop_rate=drop_rate)
    return load_pretrained(net, pretrained, names=ir_names)
