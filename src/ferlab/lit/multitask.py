"""The Classifier's steps for a network with valence/arousal outputs (`head=va|expr_va`).

Batches are (x, class targets, VA targets (B, 2), NaN where not annotated). The loss is
ce_weight * expression loss (`loss=`, on the class logits) + ccc_weight * (1 - CCC) + mse_weight * MSE; metrics
are the Classifier's own class metrics (same names) plus `<split>/ccc_valence` ... (`ferlab.lit.va`).
A plain classifier (`head=classes`) never comes here: its steps are the Classifier's, unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ferlab.lit.heads import Head
from ferlab.lit.va import VAMetrics, ccc_loss, masked_mse


def tta_outputs(net: nn.Module, head: Head, x: Tensor, tta: Any | None) -> tuple[Tensor | None, Tensor | None]:
    """(class scores (B, K) or None, VA (B, 2) or None): raw logits and VA of one forward pass without `tta`, else
    softmax probabilities and VA each averaged over the views."""
    if tta is None:
        return head.split(net(x))
    probs = va = None
    views = tta.views(x)
    for view in views:
        logits, values = head.split(net(view).float())
        if logits is not None:
            probs = logits.softmax(1) if probs is None else probs + logits.softmax(1)
        if values is not None:
            va = values if va is None else va + values
    return (None if probs is None else probs / len(views)), (None if va is None else va / len(views))


class MultiTask(nn.Module):
    """Loss, metrics and steps of a head with VA outputs; `module` is the Classifier (its loss, class metrics, log).

    Args:
        head: what the network's outputs are (`ferlab.lit.heads.Head`).
        test_prefixes: metric prefix of each test dataloader.
    """

    def __init__(self, head: Head, test_prefixes: list[str]) -> None:
        super().__init__()
        self.head = head
        self.val_va = VAMetrics()
        self.test_va = nn.ModuleList([VAMetrics() for _ in test_prefixes])

    def va_loss(self, va: Tensor, target: Tensor) -> Tensor:
        """The weighted VA terms of the loss (invalid rows masked)."""
        loss = self.head.ccc_weight * ccc_loss(va, target)
        return loss + self.head.mse_weight * masked_mse(va, target) if self.head.mse_weight else loss

    def loss(self, module: Any, logits: Tensor | None, y: Tensor, va: Tensor, target: Tensor) -> Tensor:
        """The multi-task loss: expression loss (every row) plus the VA terms (annotated rows)."""
        loss = self.va_loss(va, target)
        return loss + self.head.ce_weight * module.loss_fn(logits, y) if logits is not None else loss

    def training_step(self, module: Any, batch: tuple[Tensor, ...]) -> Tensor:
        x, y, target = batch
        logits, va = self.head.split(module(x))
        loss = self.loss(module, logits, y, va, target)
        module.train_loss.update(loss.detach(), weight=len(x))
        module.log("train/loss", module.train_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        if logits is not None:
            module.train_metrics(logits.argmax(1), module.hard_targets(y))
            module.log("train/acc", module.train_metrics, on_step=False, on_epoch=True, prog_bar=True,
                       batch_size=len(x))
        return loss

    def validation_step(self, module: Any, batch: tuple[Tensor, ...]) -> None:
        x, y, target = batch
        logits, va = self.head.split(module(x))
        module.val_loss.update(self.loss(module, logits, y, va, target), weight=len(x))
        module.log("val/loss", module.val_loss, prog_bar=True, batch_size=len(x))
        if logits is not None:
            module.val_metrics.update(logits, module.hard_targets(y))
            module.log_dict(module.val_metrics, prog_bar=True, batch_size=len(x))
        self.val_va.update(va, target)
        self.val_va.log_to(module, "val", len(x))

    def test_step(self, module: Any, batch: tuple[Tensor, ...], dataloader_idx: int) -> None:
        """Test metrics as the Classifier's (plain cross entropy, or NLL of the views' mean softmax under `tta=`),
        plus the VA terms and metrics. The eval report after training predicts the test sets again."""
        x, y, target = batch
        prefix, y = module.test_prefixes[dataloader_idx], module.hard_targets(y)
        scores, va = tta_outputs(module.net, self.head, x, module.tta)
        loss = self.va_loss(va, target)
        if scores is not None:
            class_loss = nn.functional.cross_entropy(scores, y) if module.tta is None else \
                nn.functional.nll_loss(scores.clamp_min(1e-12).log(), y)
            loss = loss + self.head.ce_weight * class_loss
            module.test_metrics[dataloader_idx].update(scores, y)
            module.test_f1[dataloader_idx].update(scores, y)
            module.log_dict(module.test_metrics[dataloader_idx], add_dataloader_idx=False, batch_size=len(x))
        module.test_loss[dataloader_idx].update(loss, weight=len(x))
        module.log(f"{prefix}/loss", module.test_loss[dataloader_idx], add_dataloader_idx=False, batch_size=len(x))
        self.test_va[dataloader_idx].update(va, target)
        self.test_va[dataloader_idx].log_to(module, prefix, len(x))
