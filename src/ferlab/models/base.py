"""The surface every zoo model shares, so prototypes, Grad-CAM, feature fusion and the training methods
(`ferlab.methods`) work on all of them."""

from __future__ import annotations

from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.models.layers import check_rate


class FERNet(nn.Module):
    """A backbone with a linear head.

    Subclasses call `init_head(num_features, num_classes, drop_rate)`, which sets `num_features` (embedding
    width), `head_drop` (dropout before the head) and `head` (nn.Linear); they call `set_cam_layer(module)`
    (the module whose output Grad-CAM explains: the last spatial stage, output (B, C, h, w)) and implement
    `forward_features(x) -> (B, num_features)` pooled embeddings.

    The feature-map surface (what EAC's attention maps and DAN's attention heads read): a net whose embedding is
    computed from one last spatial map sets `feature_map_channels` (C) and implements `forward_feature_map(x) ->
    (B, C, h, w)` and `pool_features(fmap) -> (B, num_features)` (global pooling and any neck after it), with
    `forward_features(x) == pool_features(forward_feature_map(x))` exactly. A net without one (several stages
    fused, token models) keeps `feature_map_channels = 0`, and asking for the map is one FerlabError.
    """

    num_features: int
    head: nn.Module
    head_drop: nn.Module
    cam_layer_name: str = ""
    feature_map_channels: int = 0  # C of forward_feature_map's (B, C, h, w); 0: no single feature map
    no_feature_map_reason = "its embedding is not pooled from one last feature map"
    load_report = None  # what `pretrained=` loaded (ferlab.models.pretrained.LoadReport), set by the builder

    def set_cam_layer(self, module: nn.Module) -> None:
        """Point `cam_layer` at one of this net's submodules (stored by name, so it is not a second child)."""
        self.cam_layer_name = next(name for name, m in self.named_modules() if m is module)

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose (B, C, h, w) output Grad-CAM explains: the last spatial stage."""
        return self.get_submodule(self.cam_layer_name)

    def init_head(self, num_features: int, num_classes: int, drop_rate: float) -> None:
        """Dropout (`drop_rate`) then a linear classifier on the (B, num_features) embedding."""
        check_rate(drop_rate=drop_rate)
        self.num_features = num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes)

    @property
    def drop_rate(self) -> float:
        """Dropout probability on the embedding before the head."""
        return self.head_drop.p

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def has_feature_map(self) -> bool:
        """Whether `forward_feature_map` / `pool_features` exist for this net."""
        return self.feature_map_channels > 0

    def no_feature_map(self) -> FerlabError:
        """The one-line error for a net without a single feature map."""
        return FerlabError(f"{type(self).__name__} has no single feature map: {self.no_feature_map_reason}")

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, feature_map_channels, h, w)
        raise self.no_feature_map()

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, feature_map_channels, h, w) -> (B, num_features)
        raise self.no_feature_map()

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:  # (B, num_features) -> (B, num_classes)
        return self.head(self.head_drop(features))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.forward_head(self.forward_features(x))
