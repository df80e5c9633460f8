"""Losses of the reports. Each takes logits (B, K) and targets as class ids (B,) or distributions (B, K).

Distributions are what FER+ gives (vote shares); class ids are everything else. One code path serves both:
ids become one-hot rows, then every loss is a cross entropy against a target distribution q:
loss_i = -sum_k w_k q_ik log p_ik, averaged over the batch with weights sum_k w_k q_ik (so class-weighted
ce with ids equals PyTorch's weighted mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferlab.data.balance import inverse_frequency_weights


def as_distribution(target: Tensor, num_classes: int) -> Tensor:
    """(B,) class ids or (B, K) non-negative scores -> (B, K) float rows summing to 1.

    Only shapes are checked here (values would cost a device sync every step); the readers validate labels.
    """
    if target.ndim == 1:
        if target.dtype.is_floating_point:
            raise ValueError(f"class-id targets must be integers, got {target.dtype}")
        one_hot = torch.zeros(len(target), num_classes, device=target.device)
        return one_hot.scatter_(1, target.long().unsqueeze(1), 1.0)
    if target.ndim != 2 or target.shape[1] != num_classes:
        raise ValueError(f"targets must be (B,) ids or (B, {num_classes}) distributions, got {tuple(target.shape)}")
    target = target.float()
    return target / target.sum(1, keepdim=True)  # vote counts or unnormalized scores become distributions


def soft_cross_entropy(logits: Tensor, q: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean over the batch of -sum_k w_k q_k log softmax(logits)_k, normalized by sum_k w_k q_k."""
    log_p = F.log_softmax(logits.float(), dim=1)  # (B, K); fp32 even under autocast
    if weight is None:
        return -(q * log_p).sum(1).mean()
    wq = q * weight.to(log_p.dtype)  # (B, K)
    return -(wq * log_p).sum() / wq.sum().clamp_min(torch.finfo(log_p.dtype).tiny)


class SoftTargetCrossEntropy(nn.Module):
    """Cross entropy against target distributions (FER+ `crossentropy`/`multi_target` labels); ids also work.

    Rows of the target are normalized to sum to 1, so raw vote counts can be passed as they are.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_cross_entropy(logits, as_distribution(target, logits.shape[1]))


class OffTargetSmoothingCE(nn.Module):
    """Report 001's label smoothing: the true class gets 1 - smoothing, every other class smoothing / (K - 1).

    PyTorch's `label_smoothing=e` instead gives the true class 1 - e + e/K and the others e/K. A
    distribution target q becomes (1 - e) q + e (1 - q) / (K - 1), which is the same for one-hot rows.
    """

    def __init__(self, smoothing: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"loss.smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        k = logits.shape[1]
        q = as_distribution(target, k)
        smoothed = (1.0 - self.smoothing) * q + self.smoothing * (1.0 - q) / (k - 1)
        return soft_cross_entropy(logits, smoothed)


class ClassWeightedCE(nn.Module):
    """Cross entropy with per-class weights; by default (K / n_c normalized) from the train split's counts.

    Args:
        num_classes: K (interpolated from the data config).
        weights: fixed per-class weights; None: computed from the train split when training starts
            (`set_class_counts`, called by the Classifier), uniform until then.
        power: weight_c = (N / (K n_c)) ** power; 1 is inverse frequency (report 001), 0.5 a milder version.
        label_smoothing: PyTorch-style smoothing applied to the target distribution first.
    """

    def __init__(
        self, num_classes: int, weights: Sequence[float] | None = None, power: float = 1.0, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if weights is not None and len(weights) != num_classes:
            raise ValueError(f"loss.weights has {len(weights)} values but there are {num_classes} classes")
        self.num_classes, self.power, self.label_smoothing = num_classes, power, label_smoothing
        self.fixed = weights is not None
        initial = torch.tensor(list(weights), dtype=torch.float) if weights is not None else torch.ones(num_classes)
        if (initial < 0).any():
            raise ValueError(f"loss.weights must be non-negative, got {initial.tolist()}")
        # a plain attribute, not a buffer: rebuilt each run, not in checkpoints, and not averaged as a buffer by EMA/SWA
        self.weight = initial

    def set_class_counts(self, counts: Tensor) -> None:
        """Derive the weights from (K,) training images per class (a class with no images gets weight 0)."""
        if self.fixed:
            return
        counts = torch.as_tensor(counts)
        if counts.shape != (self.num_classes,):
            raise ValueError(f"class counts must have shape ({self.num_classes},), got {tuple(counts.shape)}")
        self.weight = inverse_frequency_weights(counts, self.power)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        q = as_distribution(target, logits.shape[1])
        if self.label_smoothing:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / q.shape[1]
        if self.weight.device != logits.device:  # moved once: the module's .to() does not move plain tensors
            self.weight = self.weight.to(logits.device)
        return soft_cross_entropy(logits, q, self.weight)
