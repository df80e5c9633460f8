"""Valence/arousal targets: the CCC loss and the per-dimension metrics (CCC, RMSE, PCC, SAGR).

Targets are (B, 2) float rows (valence, arousal) in [-1, 1]; a row without an annotation (AffectNet's -2) is NaN
and is masked: it changes neither the VA loss nor a metric (its class label still counts in the expression loss).

The loss uses Lin's concordance correlation coefficient with population moments over the batch's valid rows:
CCC = 2 cov(p, t) / (var p + var t + (mean p - mean t)^2). The metrics are torchmetrics' (streamed over the whole
split, synchronised across DDP processes): ConcordanceCorrCoef and PearsonCorrCoef divide variances by n - 1
(torchmetrics' convention, an O(1/n) difference from Lin's CCC), MeanSquaredError(squared=False) is the RMSE,
and SAGR (sign agreement) is the share of rows whose prediction has the target's sign.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.regression import ConcordanceCorrCoef, MeanSquaredError, PearsonCorrCoef

from ferlab.lit.heads import VA_METRICS, VA_NAMES


def valid_rows(target: Tensor) -> Tensor:
    """(B,) bool: rows with both values annotated (finite)."""
    return torch.isfinite(target).all(dim=1)


def _masked_moments(pred: Tensor, target: Tensor) -> tuple[Tensor, ...]:
    """Means, population variances and covariance (each (2,)) over the valid rows, and their count; computed with
    weights instead of indexing, so no step waits on the device for the count."""
    w = valid_rows(target).unsqueeze(1).to(pred.dtype)  # (B, 1)
    t = torch.where(w.bool(), target, torch.zeros_like(target)).to(pred.dtype)  # NaN rows out of every sum
    n = w.sum()
    denom = n.clamp_min(1)
    mp, mt = (w * pred).sum(0) / denom, (w * t).sum(0) / denom
    dp, dt = w * (pred - mp), w * (t - mt)
    return mp, mt, (dp * dp).sum(0) / denom, (dt * dt).sum(0) / denom, (dp * dt).sum(0) / denom, n


def ccc(pred: Tensor, target: Tensor) -> Tensor:
    """(D,) Lin's concordance correlation coefficient of each column of (B, D) predictions and targets, invalid
    (NaN) target rows left out."""
    mp, mt, vp, vt, cov, _ = _masked_moments(pred.float(), target.float())
    return 2 * cov / (vp + vt + (mp - mt) ** 2).clamp_min(torch.finfo(torch.float32).tiny)


def ccc_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - CCC per dimension, averaged; 0 (with a zero gradient) for a batch of fewer than 2 valid rows."""
    enough = (valid_rows(target).sum() >= 2).to(torch.float32)
    return (1 - ccc(pred, target)).mean() * enough


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the valid rows and both dimensions (0 without any)."""
    w = valid_rows(target).unsqueeze(1).to(torch.float32)
    t = torch.where(w.bool(), target.float(), torch.zeros_like(target, dtype=torch.float32))
    return (w * (pred.float() - t) ** 2).sum() / (w.sum() * pred.shape[1]).clamp_min(1)


class SignAgreement(Metric):
    """SAGR: the share of predictions with the same sign as their target (sign(0) = 0), streamed over batches."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("agree", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.agree += (torch.sign(preds) == torch.sign(target)).sum()
        self.total += target.numel()

    def compute(self) -> Tensor:
        return (self.agree / self.total).float()


class MeanCCC(ConcordanceCorrCoef):
    """The mean of the two dimensions' CCC: one number to select a checkpoint on (`monitor=val/ccc_mean`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(num_outputs=len(VA_NAMES), **kwargs)

    def compute(self) -> Tensor:
        return super().compute().mean()


def _metric(name: str) -> Metric:
    if name == "ccc":
        return ConcordanceCorrCoef()
    if name == "pcc":
        return PearsonCorrCoef()
    if name == "rmse":
        return MeanSquaredError(squared=False)
    return SignAgreement()


class VAMetrics(nn.Module):
    """Every VA metric of one split: `<metric>_<dimension>` (e.g. ccc_valence, rmse_arousal) and ccc_mean."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({f"{m}_{d}": _metric(m) for m in VA_METRICS for d in VA_NAMES})
        self.metrics["ccc_mean"] = MeanCCC()
        self.updated = False

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: predictions and targets (B, 2); invalid target rows are left out."""
        keep = valid_rows(target)
        pred, target = pred.detach().float()[keep], target.float()[keep]
        if not len(target):
            return
        self.updated = True
        for name, metric in self.metrics.items():
            if name == "ccc_mean":
                metric.update(pred, target)
            else:
                column = VA_NAMES.index(name.rsplit("_", 1)[1])
                metric.update(pred[:, column], target[:, column])

    def log_to(self, module: nn.Module, prefix: str, batch_size: int) -> None:
        """Log each metric object as `<prefix>/<name>` (Lightning computes it at the epoch's end, over every
        process)."""
        for name, metric in self.metrics.items():
            module.log(f"{prefix}/{name}", metric, add_dataloader_idx=False, batch_size=batch_size,
                       prog_bar=name == "ccc_mean")

    def compute(self) -> dict[str, float]:
        """The metrics as plain floats (an evaluation pass outside Lightning), then reset."""
        values = {name: float(metric.compute()) for name, metric in self.metrics.items()} if self.updated else {}
        for metric in self.metrics.values():
            metric.reset()
        self.updated = False
        return values
