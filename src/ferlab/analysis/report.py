"""The evaluation report of `ferlab eval` and of `ferlab train test=true`: report.json, report.md,
confusion_matrix.png and TensorBoard images, one section per evaluated split (e.g. test_public, test_private);
with valence/arousal outputs (`head=va|expr_va`) and annotated data also each split's VA metrics and
va_histogram.png (`ferlab.analysis.va`); for data of other classes the cross-dataset section
(`ferlab.analysis.cross_dataset`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ferlab.analysis.common import batched, is_validation, split_sets
from ferlab.analysis.metrics import classification_report, flat_metrics
from ferlab.analysis.tta import TestTimeAugment
from ferlab.analysis.va import has_va, predict_head, va_figure, va_flat_metrics, va_markdown, va_report
from ferlab.lit.heads import Head
from ferlab.runs.io import atomic_write_text
from ferlab.runs.runfiles import write_json

log = logging.getLogger("ferlab.eval")
FILES = ("report.json", "report.md", "confusion_matrix.png", "va_histogram.png")


@torch.inference_mode()
def predict_split(net: nn.Module, datamodule: Any, images: Tensor, device: torch.device,
                  tta: TestTimeAugment, batch_size: int | None = None) -> Tensor:
    """(N, K) softmax probabilities of uint8 `images` (N, C, H, W), through the eval transform and `tta`."""
    return batched(lambda x: tta(net, x), images, datamodule, device, batch_size)


def evaluate_sets(net: nn.Module, datamodule: Any, sets: dict[str, tuple[Tensor, Tensor]], device: torch.device,
                  tta: TestTimeAugment, top_pairs: int = 5, batch_size: int | None = None,
                  predictions: dict[str, Tensor] | None = None, head: Head | None = None,
                  class_names: Sequence[str] | None = None) -> dict[str, dict]:
    """One report per split (metric prefix -> report), predictions made once per image: the classification
    report, and `va` where the network has valence/arousal outputs and the images have annotations.

    predictions: prefix -> (N,) class ids already made for that split (e.g. by `trainer.test`); those splits
    do not go through the network again (plain classifiers only).
    head: what the net's outputs are (None: K class logits). class_names: the classes the targets are ids of
    (default: the data's).
    """
    names = list(class_names or datamodule.class_names)
    plain = head is None or not head.has_va
    reports = {}
    for prefix, (images, targets) in sets.items():
        preds, va = ((predictions or {}).get(prefix) if plain else None), None
        if preds is None and plain:
            preds = predict_split(net, datamodule, images, device, tta, batch_size).argmax(1)
        elif not plain:
            probs, va = predict_head(net, head, datamodule, images, device, tta, batch_size)
            preds = None if probs is None else probs.argmax(1)
        report = classification_report(preds, targets, names, top_pairs) if preds is not None else \
            {"num_images": len(targets)}
        va_targets = datamodule.va_for(images) if va is not None and hasattr(datamodule, "va_for") else None
        if va_targets is not None and (scored := va_report(va, va_targets)) is not None:
            report["va"] = scored
        report["validation_split"] = is_validation(datamodule, images)
        reports[prefix] = report
    return reports


def markdown(report: dict[str, Any]) -> str:
    """report.md: a header, then per split the averages, the per-class table, the confusion matrix, the pairs."""
    lines = [f"# Evaluation: {report['checkpoint']}", "",
             f"data `{report['data']}`, split `{report['split']}`, test-time augmentation `{report['tta']['mode']}`"
             f" ({report['tta']['views']} view(s))", ""]
    if report.get("cross_dataset"):
        from ferlab.analysis.cross_dataset import cross_markdown

        lines += cross_markdown(report["cross_dataset"])
    for prefix, split in report["splits"].items():
        lines += _split_markdown(prefix, split, report["class_names"])
    return "\n".join(lines) + "\n"


def _split_markdown(prefix: str, split: dict[str, Any], class_names: Sequence[str]) -> list[str]:
    lines = [f"## {prefix} ({split['num_images']} images)", ""]
    if split["validation_split"]:
        lines += ["Note: the checkpoint was selected on this split (it is also the validation split), so its "
                  "scores are optimistic.", ""]
    if split.get("va"):
        lines += va_markdown(split["va"])
    if "accuracy" not in split:  # valence/arousal only (head=va)
        return lines
    lines += [f"accuracy **{split['accuracy']:.4f}** · macro-F1 **{split['macro']['f1']:.4f}** · "
              f"weighted F1 {split['weighted']['f1']:.4f} · macro precision {split['macro']['precision']:.4f} · "
              f"macro recall {split['macro']['recall']:.4f}", "",
              "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, row in split["per_class"].items():
        cells = [_num(row[m]) for m in ("precision", "recall", "f1")]
        lines.append(f"| {name} | {' | '.join(cells)} | {row['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted; counts, row-normalized in parentheses):", "",
              "| true \\ predicted | " + " | ".join(class_names) + " |", "|---|" + "---:|" * len(class_names)]
    for name, counts, rates in zip(class_names, split["confusion_matrix"], split["confusion_matrix_normalized"],
                                   strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{c} ({r:.2f})" for c, r in zip(counts, rates, strict=True)) + " |")
    lines += ["", "Most confused (true -> predicted):", ""]
    pairs = split["most_confused"]
    lines += [f"- {p['true']} -> {p['pred']}: {p['count']} ({p['rate']:.1%} of {p['true']})" for p in pairs] or ["- none"]
    return [*lines, ""]


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def build_report(reports: dict[str, dict], class_names: Sequence[str], *, checkpoint: str, data: str, split: str,
                 tta: TestTimeAugment, head: Head | None = None, cross_dataset: dict | None = None) -> dict[str, Any]:
    """report.json's content: what was evaluated, per split reports, and all numbers as ferlab metric names
    (`cross_dataset`: the section of `ferlab.analysis.cross_dataset`, for data of other classes)."""
    metrics: dict[str, float] = {}
    for prefix, report in reports.items():
        metrics.update(flat_metrics(prefix, report) if "accuracy" in report else {})
        metrics.update(va_flat_metrics(prefix, report["va"]) if report.get("va") else {})
    out = {"checkpoint": checkpoint, "data": data, "split": split, "tta": tta.describe(),
           "class_names": list(class_names), "metrics": metrics, "splits": reports}
    if head is not None and head.has_va:
        out["head"] = head.describe()
    return {**out, "cross_dataset": cross_dataset} if cross_dataset else out


def write_report(report: dict[str, Any], out: Path, writers: Sequence[Any] = ()) -> list[Path]:
    """report.json, report.md, confusion_matrix.png (splits with classes) and va_histogram.png (splits with
    valence/arousal) into `out`; the figures to every TensorBoard `writers` too."""
    from ferlab.analysis.figures import confusion_figure, figure_array, save_png

    paths = [write_json(out / "report.json", report), atomic_write_text(out / "report.md", markdown(report))]
    figures = {}
    classified = {p: s for p, s in report["splits"].items() if "confusion_matrix" in s}
    if classified:
        figures["confusion_matrix"] = confusion_figure(classified, report["class_names"])
    if has_va(report["splits"]):
        figures["va_histogram"] = va_figure(report["splits"])
    for name, fig in figures.items():
        image = figure_array(fig)
        paths.append(save_png(image, out / f"{name}.png"))
        for writer in writers:
            writer.add_image(f"eval/{name}", image, global_step=0, dataformats="HWC")
    for writer in writers:
        writer.flush()
    return paths


def _tested(model: Any, sets: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """The predictions `trainer.test` made on each split, where they cover it image for image in order (one
    process, no `limit_test_batches`); other splits (DDP shards, limited batches) are predicted again."""
    tested = model.tested_predictions() if hasattr(model, "tested_predictions") else {}
    return {prefix: preds for prefix, (preds, targets) in tested.items()
            if prefix in sets and torch.equal(targets, sets[prefix][1].to(targets.dtype))}


def report_after_training(trainer: Any, model: Any, datamodule: Any, run_dir: Path) -> list[Path]:
    """`ferlab train test=true`: the report of the tested checkpoint on every test split, into `<run>/eval/`.

    Built from the predictions of `trainer.test` (one pass over the test splits); a split it did not cover
    whole, and every split of a network with valence/arousal outputs, is predicted on the trainer's device.
    The confusion matrices go to the run's TensorBoard logger.
    """
    sets = split_sets(datamodule, "test")
    tested = _tested(model, sets)
    net, device = model.net, trainer.strategy.root_device
    tta = getattr(model, "tta", None) or TestTimeAugment("none")  # the test steps' own (`tta=` of the train config)
    home = next(net.parameters()).device
    was_training = net.training
    if len(tested) < len(sets):
        net.eval().to(device)
    head = getattr(model, "multitask", None) and model.multitask.head  # None: a plain classifier
    try:
        reports = evaluate_sets(net, datamodule, sets, device, tta, predictions=tested, head=head)
    finally:
        net.train(was_training).to(home)
    ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    report = build_report(reports, datamodule.class_names, checkpoint=ckpt or "(final weights)",
                          data=datamodule.name, split="test", tta=tta, head=head)
    writers = [lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_image")]
    paths = write_report(report, run_dir / "eval", writers)
    log.info("evaluation report: %s", paths[1])
    return paths
