"""The surface every zoo model shares, so prototypes, Grad-CAM and feature fusion work on all of them."""

from __future__ import annotations

from torch import Tensor, nn

from ferlab.models.layers import check_rate


class FERNet(nn.Module):
    """A backbone with a linear head.

    Subclasses call `init_head(num_features, num_classes, drop_rate)`, which sets `num_features` (embedding
    width), `head_drop` (dropout before the head) and `head` (nn.Linear); they call `set_cam_layer(module)`
    (the module whose output Grad-CAM explains: the last spatial stage, output (B, C, h, w)) and implement
    `forward_features(x) -> (B, num_features)` pooled embeddings.
    """

    num_features: int
    head: nn.Module
    head_drop: nn.Module
    cam_layer_name: str = ""
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

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:  # (B, num_features) -> (B, num_classes)
        return self.head(self.head_drop(features))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.forward_head(self.forward_features(x))

