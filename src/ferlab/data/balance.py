"""Class balance of a training split: the inverse-frequency weights `loss=weighted_ce` and the datamodule share.

Here, below both, so the data layer never imports the training layer (`lit/`)."""

from __future__ import annotations

import torch
from torch import Tensor


def inverse_frequency_weights(counts: Tensor, power: float = 1.0) -> Tensor:
    """(K,) float weights (N / (K_present n_c)) ** power from per-class image counts; an empty class gets 0."""
    counts = torch.as_tensor(counts, dtype=torch.double)
    present = counts > 0
    weight = torch.zeros_like(counts)
    weight[present] = (counts.sum() / (present.sum() * counts[present])) ** power
    return weight.float()
