"""Batch mixing (MixUp, CutMix) through torchvision's v2 transforms, on the training batch on its device.

One of them is drawn per batch: MixUp with probability `mixup.p`, else CutMix with probability `cutmix.p`, else
none. Mixed targets are distributions (B, K), which every ferlab loss takes (the soft-target path FER+ vote shares
use); the images' own class ids go along so training metrics still count hard labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ferlab.errors import FerlabError

KEYS = ("alpha", "p")


def mix_settings(name: str, value: Mapping | None) -> tuple[float, float]:
    """(alpha, p) from `{alpha: ..., p: ...}` (None: off), checked."""
    value = dict(value or {"alpha": 1.0, "p": 0.0})
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise FerlabError(f"augment.{name}: unknown key(s) {unknown}; expected {list(KEYS)}")
    alpha, p = float(value.get("alpha", 1.0)), float(value.get("p", 0.0))
    if alpha <= 0 or not 0.0 <= p <= 1.0:
        raise FerlabError(f"augment.{name}: alpha must be > 0 and p in [0, 1], got alpha={alpha}, p={p}")
    return alpha, p


class BatchMix:
    """MixUp / CutMix on a batch: `(x (B,C,H,W), y (B,) ids or (B,K)) -> (x, (B,K) float targets)`.

    Args:
        num_classes: K, to one-hot class-id targets.
        mixup, cutmix: `{alpha, p}`: Beta(alpha, alpha) draws the mixing weight; p is the share of batches mixed
            this way (p_mixup + p_cutmix <= 1; the rest are left alone).
    """

    def __init__(self, num_classes: int, mixup: Mapping | None = None, cutmix: Mapping | None = None) -> None:
        from torchvision.transforms import v2  # here: importing ferlab.data stays light

        (mix_alpha, self.p_mixup), (cut_alpha, self.p_cutmix) = mix_settings("mixup", mixup), mix_settings("cutmix", cutmix)
        if self.p_mixup + self.p_cutmix > 1.0 + 1e-9:
            raise FerlabError(f"augment.mixup.p + augment.cutmix.p must be <= 1, got {self.p_mixup} + {self.p_cutmix}")
        self.mixup = v2.MixUp(alpha=mix_alpha, num_classes=num_classes)
        self.cutmix = v2.CutMix(alpha=cut_alpha, num_classes=num_classes)
        self.num_classes = num_classes

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if y.ndim == 2:  # vote counts or shares: mix distributions, so each image weighs what lambda says
            y = y.float() / y.float().sum(1, keepdim=True)
        u = float(torch.rand(()))  # one draw per batch, from torch's (seeded) CPU generator, as torchvision's Beta
        if u < self.p_mixup:
            return self.mixup(x, y)
        if u < self.p_mixup + self.p_cutmix:
            return self.cutmix(x, y)
        if y.ndim == 1:  # unmixed batches carry distributions too, so a batch's targets have one shape
            y = torch.nn.functional.one_hot(y, self.num_classes)
        return x, y.float()
