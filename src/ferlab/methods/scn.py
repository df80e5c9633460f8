"""Self-Cure Network (Wang et al., CVPR 2020; github.com/kaiwang960112/Self-Cure-Network, src/train.py).

- Self-attention importance weighting: alpha = sigmoid(FC(features)) per image, logits = alpha * head(features)
  (the network the paper evaluates: `SCNNet`, also at inference).
- Rank regularization: the batch's weights sorted, the top int(beta * B) form the high group, the rest the low one;
  RR = max(0, margin_1 - (mean(high) - mean(low))), added to the classification loss with weight 1.
- Relabeling: from the `relabel_epoch`-th epoch (counted from 1, as the official loop), a training image whose
  highest softmax probability beats the one of its current label by more than margin_2 takes the predicted class
  as its label the next time it is drawn. Like the official code, any image of the batch may be relabeled (the
  paper restricts it to the low-importance group).

Defaults are the official train.py's: beta 0.7, margin_1 0.15, margin_2 0.2, relabel_epoch 10. The relabel table is
indexed by the image's row in the train split (batches carry it), kept with every checkpoint, and under DDP every
rank applies every rank's relabels (all-gathered each step), so all ranks hold the same table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError
from ferlab.methods.base import (
    Gather,
    LastValue,
    Loss,
    Method,
    MethodNet,
    Step,
    last_write_wins,
    require_fernet,
)
from ferlab.methods.registry import register_method


class SCNNet(MethodNet):
    """The body with SCN's importance branch: logits = sigmoid(FC(f)) * head(f), f the (dropped-out) embedding."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__(require_fernet(body, "scn"))
        self.alpha = nn.Sequential(nn.Linear(body.num_features, 1), nn.Sigmoid())

    # the body's head and dropout are SCN's (see `weighted`)
    num_classes = property(lambda self: self.body.num_classes)
    drop_rate = property(lambda self: self.body.drop_rate)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_features)
        return self.body.forward_features(x)

    def weighted(self, features: Tensor) -> tuple[Tensor, Tensor]:  # (B, D) -> logits (B, K), weights (B, 1)
        features = self.body.head_drop(features)  # official: one dropout before both branches
        alpha = self.alpha(features)
        return alpha * self.body.head(features), alpha

    def forward_head(self, features: Tensor) -> Tensor:  # (B, num_features) -> (B, num_classes)
        return self.weighted(features)[0]


def rank_regularization(alpha: Tensor, beta: float, margin: float) -> Tensor:
    """max(0, margin - (mean of the top int(beta * B) weights - mean of the others)); alpha (B,) or (B, 1).

    The high group keeps at least one image and leaves at least one (the official int(beta * B) with B >= 2 and
    0 < beta < 1; it only differs where that would be an empty group, which gives NaN there).
    """
    weights = alpha.reshape(-1)
    b = len(weights)
    top = min(max(int(b * beta), 1), b - 1)
    high = weights.topk(top).values.mean()
    low = weights.topk(b - top, largest=False).values.mean()
    return (low - high + margin).clamp(min=0)


@torch.no_grad()
def relabels(logits: Tensor, targets: Tensor, margin: float) -> Tensor:
    """(B,) new class ids where max softmax - softmax of the current label > margin, -1 elsewhere."""
    probs = logits.float().softmax(1)
    p_max, predicted = probs.max(1)
    p_label = probs.gather(1, targets.view(-1, 1)).squeeze(1)
    return torch.where(p_max - p_label > margin, predicted, torch.full_like(predicted, -1))


@register_method
class SCN(Method):
    """Self-Cure Network: importance weighting, rank regularization and relabeling (see the module docstring).

    Args:
        beta: share of each batch in the high-importance group.
        margin_1: rank regularization margin between the groups' mean weights.
        margin_2: relabeling margin between the top probability and the label's.
        relabel_epoch: first epoch (counted from 1) whose batches relabel; a large value turns relabeling off.
    """

    needs_index = True
    wraps = True
    terms = ("scn_rank", "scn_relabeled")  # the epoch's mean rank loss; training images relabeled at its end

    def __init__(self, beta: float = 0.7, margin_1: float = 0.15, margin_2: float = 0.2, relabel_epoch: int = 10) -> None:
        super().__init__()
        if not 0.0 < beta < 1.0 or margin_1 < 0 or margin_2 < 0 or relabel_epoch < 1:
            raise FerlabError(f"train_method=scn: beta in (0, 1), margins >= 0 and relabel_epoch >= 1 expected, got "
                              f"beta={beta}, margin_1={margin_1}, margin_2={margin_2}, relabel_epoch={relabel_epoch}")
        self.beta, self.margin_1, self.margin_2, self.relabel_epoch = beta, margin_1, margin_2, relabel_epoch
        self.term_means["scn_relabeled"] = LastValue()
        self.labels: Tensor | None = None  # (N,) current class id of every train-split row
        self.original: Tensor | None = None  # (N,) the dataset's ids, for the count of relabeled rows

    def wrap(self, net: nn.Module) -> nn.Module:
        return SCNNet(net)

    def setup_fit(self, datamodule: Any) -> None:
        kind = getattr(datamodule, "train_kind", "index")
        if kind != "index" or getattr(datamodule, "mix", None) is not None:
            what = "mixed (mixup/cutmix)" if kind == "index" else f"{kind} (FER+ label_mode)"
            raise FerlabError(f"train_method=scn relabels class ids, but the training targets are {what}; use class-id "
                              "targets without batch mixing")
        self.original = datamodule.splits["train"][1].clone().long()
        self.labels = self.original.clone()

    def step(self, net: nn.Module, x: Tensor, y: Tensor, loss_fn: Loss, *, epoch: int,
             index: Tensor | None = None, gather: Gather | None = None) -> Step:
        if index is None or self.labels is None:
            raise RuntimeError("train_method=scn needs setup_fit and batches with their train-split rows")
        if self.labels.device != x.device:  # moved once: plain tensors do not follow the module's .to()
            self.labels, self.original = self.labels.to(x.device), self.original.to(x.device)
        targets = self.labels[index]
        logits, alpha = net.weighted(net.forward_features(x))
        rank = rank_regularization(alpha, self.beta, self.margin_1)
        self.log_terms(len(x), scn_rank=rank)
        if epoch + 1 >= self.relabel_epoch:
            self._relabel(index, relabels(logits, targets, self.margin_2), gather)
        self.term_means["scn_relabeled"].update((self.labels != self.original).sum())
        return Step(loss_fn(logits, targets) + rank, logits, targets)

    def _relabel(self, index: Tensor, new: Tensor, gather: Gather | None) -> None:
        """Apply this batch's relabels, and every other rank's under DDP (same order on every rank)."""
        if gather is not None:
            index, new = gather(index), gather(new)
        changed = new >= 0
        last_write_wins(self.labels, index[changed], new[changed])

    def extra_state(self) -> dict[str, Any]:
        if self.labels is None:
            return {}
        return {"labels": self.labels.cpu(), "original": self.original.cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        labels, original = state["labels"], state["original"]
        if self.original is not None and (len(original) != len(self.original) or
                                          not torch.equal(original, self.original.cpu())):
            raise FerlabError(f"train_method=scn: the checkpoint's relabel table is for {len(original)} training images "
                              f"with other labels; this run's train split has {len(self.original)}")
        device = self.labels.device if self.labels is not None else torch.device("cpu")
        self.labels, self.original = labels.to(device), original.to(device)
