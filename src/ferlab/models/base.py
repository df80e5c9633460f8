"""The surface every zoo model shares, so prototypes, Grad-CAM and feature fusion work on all of them."""

from __future__ import annotations

from torch import Tensor, nn


class FERNet(nn.Module):
    """A backbone with a linear head.

    Subclasses set `num_features` (embedding width), `head` (nn.Linear or Identity), `drop_rate`,
    and `cam_layer` (the module whose output Grad-CAM explains: the last spatial stage), and implement
    `forward_features(x) -> (B, num_features)` pooled embeddings.
    """

    num_features: int
    drop_rate: float = 0.0
    head: nn.Module
    cam_layer: nn.Module

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:  # (B, num_features) -> (B, num_classes)
        if self.drop_rate > 0:
            features = nn.functional.dropout(features, self.drop_rate, self.training)
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
