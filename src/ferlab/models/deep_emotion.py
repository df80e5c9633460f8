"""Deep-Emotion (Minaee et al., arXiv 1902.01019; report 003): a spatial transformer in front of a small CNN.

Layer sizes follow the public reimplementation the report used (66,877 parameters at 1x48x48, 7 classes),
with one fix: its `F.dropout(out)` stays on in eval mode; here dropout is a module and off in eval.
The fully connected layers are sized from `input_size`, so other input sizes work too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.models.base import FERNet
from ferlab.models.layers import check_positive, check_rate, make_act, make_norm
from ferlab.models.pretrained import load_pretrained
from ferlab.models.registry import register_model


def _conv_out(size: int, kernel: int) -> int:
    return size - kernel + 1  # valid convolution, stride 1


class DeepEmotion(FERNet):
    """Localization net -> affine grid sample -> 4 conv3x3 (one BN) with 2 max pools -> fc -> head.

    Args:
        input_size: side of the square input; sizes the two flattening linear layers.
        channels: width of the four classifier convs (10).
        hidden: width of the fc layer before the head (50); this is the embedding.
        loc_channels, loc_hidden: localization convs (8, 10) and its fc width (32).
        feature_drop_rate: dropout on the last conv map before the fc layer (0.5, the original's F.dropout).
        drop_rate: dropout on the embedding before the head.
    """

    def __init__(
        self, *, in_chans: int = 1, num_classes: int = 7, input_size: int = 48, channels: int = 10,
        hidden: int = 50, loc_channels: tuple[int, int] = (8, 10), loc_hidden: int = 32,
        feature_drop_rate: float = 0.5, drop_rate: float = 0.0, norm: str = "batch", act: str = "relu",
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, channels=channels, hidden=hidden, loc_hidden=loc_hidden)
        check_rate(feature_drop_rate=feature_drop_rate)
        loc_side = (_conv_out(_conv_out(input_size, 7) // 2, 5)) // 2  # conv7, pool2, conv5, pool2
        side = (_conv_out(_conv_out(_conv_out(_conv_out(input_size, 3), 3) // 2, 3), 3)) // 2
        if loc_side < 1 or side < 1:
            raise FerlabError(f"model argument input_size={input_size} is too small (deep_emotion: >= 18)")
        c1, c2 = loc_channels
        self.localization = nn.Sequential(
            nn.Conv2d(in_chans, c1, 7), nn.MaxPool2d(2, 2), make_act(act),
            nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2, 2), make_act(act),
        )
        self.fc_loc = nn.Sequential(nn.Linear(c2 * loc_side**2, loc_hidden), make_act(act),
                                    nn.Linear(loc_hidden, 6))
        nn.init.zeros_(self.fc_loc[2].weight)  # start from the identity transform
        self.fc_loc[2].bias.data.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, channels, 3), make_act(act), nn.Conv2d(channels, channels, 3),
            nn.MaxPool2d(2, 2), make_act(act), nn.Conv2d(channels, channels, 3), make_act(act),
            nn.Conv2d(channels, channels, 3), make_norm(norm, channels), nn.MaxPool2d(2, 2), make_act(act),
        )
        self.feature_drop = nn.Dropout(feature_drop_rate)
        self.fc = nn.Sequential(nn.Linear(channels * side**2, hidden), make_act(act))
        self.input_size = input_size
        self.init_head(hidden, num_classes, drop_rate)
        self.set_cam_layer(self.features)  # (B, channels, 9, 9) at 48x48
        self.feature_map_channels = channels

    def stn(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W), resampled by the predicted affine map
        theta = self.fc_loc(torch.flatten(self.localization(x), 1)).view(-1, 2, 3)  # (B, 2, 3)
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return nn.functional.grid_sample(x, grid, align_corners=False)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, S, S) -> (B, hidden)
        return self.pool_features(self.forward_feature_map(x))

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C, S, S) -> (B, channels, 9, 9) at 48x48
        if x.shape[-2:] != (self.input_size, self.input_size):
            side = self.input_size
            raise FerlabError(f"deep_emotion was built for {side}x{side} input (model.input_size) but got "
                              f"{tuple(x.shape[-2:])}; keep model.input_size=${{data.image_size}}")
        return self.features(self.stn(x))

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, channels, h, w) -> (B, hidden): dropout, flatten, fc
        return self.fc(torch.flatten(self.feature_drop(fmap), 1))


@register_model
def deep_emotion(*, in_chans: int = 1, num_classes: int = 7, pretrained: str | None = None, input_size: int = 48,
                 channels: int = 10, hidden: int = 50, feature_drop_rate: float = 0.5, drop_rate: float = 0.0,
                 norm: str = "batch", act: str = "relu") -> DeepEmotion:
    """Deep-Emotion; 66,877 parameters with 1x48x48 input and 7 classes."""
    net = DeepEmotion(in_chans=in_chans, num_classes=num_classes, input_size=input_size, channels=channels,
                      hidden=hidden, feature_drop_rate=feature_drop_rate, drop_rate=drop_rate, norm=norm, act=act)
    return load_pretrained(net, pretrained)
