"""Erasing Attention Consistency (Zhang et al., ECCV 2022; github.com/zyh-uaiaaaa/Erasing-Attention-Consistency,
src/main.py, model.py, loss.py).

Each training image is randomly erased (torchvision's RandomErasing(scale=(0.02, 0.25)) after normalization in the
official transform: p 0.5, the box filled with 0, i.e. the mean colour), then it and its horizontal flip go through
the network in two forward passes. Class activation maps of both views, CAM_k = sum_c w_kc F_c (F the last feature
map, w the linear head's weights, taken without gradient as the official `params[-2].data`), are compared after the
flipped view's maps are flipped back:

    loss = loss(logits of the erased image, y) + lam * mean((CAM(x) - flip(CAM(flip(x))))^2)

The official code flips the maps back with grid_sample on an align_corners grid, which is exactly a flip of the
map; `Tensor.flip` is used here. Defaults are the official main.py's: lam 5 (and p 0.5, scale (0.02, 0.25)).
Inference is the network alone (EAC adds nothing to it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferlab.data.augment import RandomErasing
from ferlab.errors import FerlabError
from ferlab.methods.base import Gather, Loss, Method, Step, require_feature_map
from ferlab.methods.registry import register_method
from ferlab.models.base import FERNet


def class_activation_maps(fmap: Tensor, weight: Tensor) -> Tensor:
    """(B, C, h, w) feature map, (K, C) head weights -> (B, K, h, w) maps, sum_c w_kc F_c (weights detached)."""
    return torch.einsum("bchw,kc->bkhw", fmap, weight.detach().to(fmap.dtype))


def flip_consistency(cams: Tensor, cams_of_flipped: Tensor) -> Tensor:
    """Mean squared difference between the maps of the images and the flipped-back maps of their flips."""
    return F.mse_loss(cams, cams_of_flipped.flip(-1))


@register_method
class EAC(Method):
    """Erasing Attention Consistency (see the module docstring).

    Args:
        lam: weight of the flip attention consistency loss.
        erase_p, erase_scale: random erasing of the input (probability, area fraction range), on the normalized
            batch with fill 0 as the official transform; erase_p=0 turns it off.
    """

    terms = ("eac_consistency",)

    def __init__(self, lam: float = 5.0, erase_p: float = 0.5, erase_scale: Sequence[float] = (0.02, 0.25)) -> None:
        super().__init__()
        if lam < 0 or not 0.0 <= erase_p <= 1.0 or len(erase_scale) != 2 or not 0 < erase_scale[0] <= erase_scale[1] <= 1:
            raise FerlabError(f"train_method=eac: lam >= 0, erase_p in [0, 1] and 0 < erase_scale[0] <= erase_scale[1] <= 1 "
                              f"expected, got lam={lam}, erase_p={erase_p}, erase_scale={list(erase_scale)}")
        self.lam = lam
        self.erase = RandomErasing(p=erase_p, scale=tuple(erase_scale), value=0.0) if erase_p > 0 else nn.Identity()

    def wrap(self, net: nn.Module) -> nn.Module:
        return require_feature_map(net, "eac", linear_on_pool=True)

    def step(self, net: FERNet, x: Tensor, y: Tensor, loss_fn: Loss, *, epoch: int,
             index: Tensor | None = None, gather: Gather | None = None) -> Step:
        x = self.erase(x)
        fmap = net.forward_feature_map(x)  # (B, C, h, w)
        logits = net.forward_head(net.pool_features(fmap))
        flipped = net.forward_feature_map(x.flip(-1))  # a second pass, as the official (its own batch statistics)
        weight = net.head.weight
        consistency = flip_consistency(class_activation_maps(fmap, weight), class_activation_maps(flipped, weight))
        self.log_terms(len(x), eac_consistency=consistency)
        return Step(loss_fn(logits, y) + self.lam * consistency, logits, y)
