"""The prototype classifier of report 001: class means of the embedding (`forward_features`) over the train
split; an image belongs to the nearest prototype, with softmax over negative Euclidean distances."""

from __future__ import annotations

import torch
from torch import Tensor


def class_sums(features: Tensor, targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(N, D) features and (N,) class ids -> (K, D) float64 per-class sums and (K,) counts (add chunks up)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, targets.long(), features.double())
    return sums, torch.bincount(targets.long(), minlength=num_classes).double()


def prototypes_from(sums: Tensor, counts: Tensor) -> Tensor:
    """(K, D) class means from summed features and counts; a class without images gets a NaN row."""
    counts = counts.unsqueeze(1)  # (K, 1)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan"))).float()


def class_prototypes(features: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(N, D) features and (N,) class ids -> (K, D) class means; a class without images gets a NaN row."""
    return prototypes_from(*class_sums(features, targets, num_classes))


def prototype_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """(N, D) x (K, D) -> (N, K) negative Euclidean distances; classes without a prototype get -inf."""
    missing = prototypes.isnan().any(1)  # (K,)
    distances = torch.cdist(features.double(), prototypes.nan_to_num(0.0).double())
    return (-distances).masked_fill(missing.unsqueeze(0), float("-inf")).float()


def prototype_probs(features: Tensor, prototypes: Tensor) -> Tensor:
    """(N, K) softmax over negative distances: the nearest prototype is the most probable class."""
    return prototype_logits(features, prototypes).softmax(1)
