"""The numbers of a classification report, from predictions and labels, with torchmetrics.

Conventions (those of torchmetrics, and of scikit-learn's `classification_report` given
`labels` = the classes that occur): a class absent from both the labels and the predictions of a split has
no score (None) and is left out of the macro averages; a class with images that is never predicted has
precision 0; weighted averages weigh each class by its support.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor


def _scores(preds: Tensor, targets: Tensor, k: int, average: str | None) -> dict[str, Tensor]:
    from torchmetrics.functional.classification import (
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    return {
        "precision": multiclass_precision(preds, targets, k, average=average),
        "recall": multiclass_recall(preds, targets, k, average=average),
        "f1": multiclass_f1_score(preds, targets, k, average=average),
    }


def most_confused(counts: Tensor, normalized: Tensor, class_names: Sequence[str], top: int) -> list[dict[str, Any]]:
    """The `top` off-diagonal (true -> predicted) cells with errors, by count, then by row-normalized rate."""
    k = len(class_names)
    cells = [(int(counts[i, j]), float(normalized[i, j]), i, j) for i in range(k) for j in range(k) if i != j]
    cells = sorted((c for c in cells if c[0] > 0), key=lambda c: (-c[0], -c[1], c[2], c[3]))[:top]
    return [{"true": class_names[i], "pred": class_names[j], "count": n, "rate": r} for n, r, i, j in cells]


def classification_report(
    preds: Tensor, targets: Tensor, class_names: Sequence[str], top_pairs: int = 5
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, confusion matrices.

    preds, targets: (N,) class ids. The confusion matrix has true classes as rows, predictions as columns;
    `confusion_matrix_normalized` divides each row by its support (rows without images stay 0).
    """
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

    k = len(class_names)
    preds, targets = preds.long().cpu(), targets.long().cpu()
    if len(preds) == 0:
        raise ValueError("classification_report needs at least one prediction")
    counts = multiclass_confusion_matrix(preds, targets, k)  # (K, K) rows: true class
    support = counts.sum(1)
    normalized = counts / support.clamp(min=1).unsqueeze(1)  # rows without images stay 0
    scored = (support + counts.sum(0)) > 0  # the class occurs in the labels or the predictions
    per_class = _scores(preds, targets, k, None)
    macro = _scores(preds, targets, k, "macro")
    weighted = _scores(preds, targets, k, "weighted")
    return {
        "num_images": len(targets),
        "accuracy": float(multiclass_accuracy(preds, targets, k, average="micro")),
        "macro": {name: float(v) for name, v in macro.items()},
        "weighted": {name: float(v) for name, v in weighted.items()},
        "per_class": {
            name: {**{m: float(per_class[m][c]) if scored[c] else None for m in per_class}, "support": int(support[c])}
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_normalized": normalized.tolist(),
        "most_confused": most_confused(counts, normalized, class_names, top_pairs),
    }


def flat_metrics(prefix: str, report: dict[str, Any]) -> dict[str, float]:
    """A report as ferlab metric names: `<prefix>/acc`, `<prefix>/f1_macro`, `<prefix>/f1_weighted`, `<prefix>/f1/<class>`."""
    out = {f"{prefix}/acc": report["accuracy"], f"{prefix}/f1_macro": report["macro"]["f1"],
           f"{prefix}/f1_weighted": report["weighted"]["f1"]}
    out.update({f"{prefix}/f1/{name}": row["f1"] for name, row in report["per_class"].items() if row["f1"] is not None})
    return out

