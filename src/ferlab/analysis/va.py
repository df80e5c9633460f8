"""Valence/arousal in the evaluation report: predictions through the head, metrics per dimension and the 2-D
histograms of predictions vs targets (report.json numbers, va_histogram.png).

Each split with VA outputs and annotated rows gets `va`: the count of annotated images, CCC/RMSE/PCC/SAGR of
valence and arousal (`ferlab.lit.va`, the same metrics training logs), their mean CCC, and four (BINS, BINS)
histograms over [-1, 1] (predictions outside are counted in the edge bins): targets' valence x arousal,
predictions' valence x arousal, and predicted vs target valence, and arousal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ferlab.analysis.common import batched
from ferlab.lit.heads import VA_NAMES, Head
from ferlab.lit.multitask import tta_outputs

BINS = 20
EDGES = np.linspace(-1.0, 1.0, BINS + 1)
HISTOGRAMS = {  # name -> (x, y) as (source, dimension): the figure's panels, in order
    "target_valence_arousal": (("target", 0), ("target", 1)),
    "predicted_valence_arousal": (("pred", 0), ("pred", 1)),
    "valence_predicted_vs_target": (("target", 0), ("pred", 0)),
    "arousal_predicted_vs_target": (("target", 1), ("pred", 1)),
}


@torch.inference_mode()
def predict_head(net: nn.Module, head: Head, datamodule: Any, images: Any, device: torch.device, tta: Any,
                 batch_size: int | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(N, K) softmax probabilities (None without classes) and (N, 2) valence/arousal (None without), each
    averaged over the views of `tta`, for uint8 `images` through the eval transform."""
    def both(x: Tensor) -> Tensor:
        probs, va = tta_outputs(net, head, x, tta)
        return torch.cat([p.float() for p in (probs, va) if p is not None], 1)

    out = batched(both, images, datamodule, device, batch_size)  # (N, K + 2) | (N, K) | (N, 2)
    k = head.num_classes if head.has_classes else 0
    return (out[:, :k] if head.has_classes else None), (out[:, k:] if head.has_va else None)


def histogram(x: np.ndarray, y: np.ndarray) -> list[list[int]]:
    """(BINS, BINS) counts of points (x, y) in [-1, 1]^2, rows along y (top row: y near -1), clipped to the edges."""
    counts, _, _ = np.histogram2d(np.clip(y, -1, 1), np.clip(x, -1, 1), bins=[EDGES, EDGES])
    return counts.astype(np.int64).tolist()


def va_report(pred: Tensor, target: Tensor) -> dict[str, Any] | None:
    """Metrics and histograms of (N, 2) predictions against (N, 2) targets (NaN rows left out); None when no
    row is annotated."""
    from ferlab.lit.va import VAMetrics, valid_rows

    keep = valid_rows(target)
    if not bool(keep.any()):
        return None
    metrics = VAMetrics()
    metrics.update(pred, target)
    values = metrics.compute()
    p, t = pred[keep].double().numpy(), target[keep].double().numpy()
    points = {"pred": p, "target": t}
    return {
        "num_annotated": int(keep.sum()),
        **{d: {m: values[f"{m}_{d}"] for m in ("ccc", "rmse", "pcc", "sagr")} for d in VA_NAMES},
        "ccc_mean": values["ccc_mean"],
        "histograms": {"edges": EDGES.tolist(), **{name: histogram(points[xs][:, xd], points[ys][:, yd])
                                                   for name, ((xs, xd), (ys, yd)) in HISTOGRAMS.items()}},
    }


def va_flat_metrics(prefix: str, va: dict[str, Any]) -> dict[str, float]:
    """A split's VA report as ferlab metric names: `<prefix>/ccc_valence`, ..., `<prefix>/ccc_mean`."""
    out = {f"{prefix}/{m}_{d}": va[d][m] for d in VA_NAMES for m in ("ccc", "rmse", "pcc", "sagr")}
    return {**out, f"{prefix}/ccc_mean": va["ccc_mean"]}


def va_markdown(va: dict[str, Any]) -> list[str]:
    """report.md lines: the per-dimension table."""
    lines = [f"Valence/arousal on {va['num_annotated']} annotated images (mean CCC **{va['ccc_mean']:.4f}**):", "",
             "| dimension | CCC | RMSE | PCC | SAGR |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {d} | " + " | ".join(f"{va[d][m]:.4f}" for m in ("ccc", "rmse", "pcc", "sagr")) + " |"
              for d in VA_NAMES]
    return [*lines, ""]


def va_figure(splits: dict[str, dict[str, Any]]) -> Any:
    """Per split with VA (rows): the four histograms as heatmaps over [-1, 1]^2."""
    from ferlab.analysis.figures import new_figure

    shown = {p: s["va"] for p, s in splits.items() if s.get("va")}
    fig = new_figure(3.0 * len(HISTOGRAMS), 3.0 * len(shown), constrained=False)  # a fixed layout: much faster
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14 / len(shown), top=1 - 0.14 / len(shown), wspace=0.35,
                        hspace=0.5)
    axes = fig.subplots(len(shown), len(HISTOGRAMS), squeeze=False)
    for row, (prefix, va) in enumerate(shown.items()):
        for ax, name in zip(axes[row], HISTOGRAMS, strict=True):
            _heatmap(ax, np.asarray(va["histograms"][name]), name, prefix, va["num_annotated"])
    return fig


def _heatmap(ax: Any, counts: np.ndarray, name: str, prefix: str, n: int) -> None:
    words = name.split("_")
    x_label, y_label = (("valence", "arousal") if name.endswith("valence_arousal") else
                        (f"target {words[0]}", f"predicted {words[0]}"))
    ax.imshow(counts, origin="lower", extent=(-1, 1, -1, 1), cmap="viridis", aspect="equal")
    if not name.endswith("valence_arousal"):
        ax.plot([-1, 1], [-1, 1], color="white", linewidth=0.8, linestyle="--")  # perfect predictions
    ax.tick_params(labelsize=7)
    ax.set_xlabel(x_label, fontsize=8)
    ax.set_ylabel(y_label, fontsize=8)
    what = (f"{words[0]} valence x arousal" if name.endswith("valence_arousal") else
            f"{words[0]}: predicted vs target")
    ax.set_title(f"{prefix} (n={n})\n{what}", fontsize=8)


def has_va(splits: dict[str, dict[str, Any]]) -> bool:
    """Whether any split of a report has valence/arousal results."""
    return any(split.get("va") for split in splits.values())

