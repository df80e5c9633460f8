"""The `ferlab explain` methods: each writes its PNG (and JSON) into the output folder and its figure to
TensorBoard, and returns the paths. `METHODS` maps `method=` names to them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from ferlab.analysis.common import Loaded, batched, model_space
from ferlab.analysis.figures import Cell, figure_array, image_grid, save_png
from ferlab.errors import FerlabError
from ferlab.runs.io import atomic_write, atomic_write_text
from ferlab.runs.runfiles import write_json

log = logging.getLogger("ferlab.tasks.explain")
TARGET_WORDS = {"label": "labelled", "pred": "predicted"}  # target= option -> its words in titles
GRAD_BATCH = 32  # images per backward pass of saliency / Grad-CAM
PROTOTYPE_CHUNK = 4096  # train images embedded per step of the prototype means


@dataclass
class Context:
    """What every method needs: the checkpoint and data, the options, where to write, the split's images."""

    loaded: Loaded
    cfg: DictConfig
    out: Path
    writers: list[Any]
    split: str  # the metric prefix / split name explained
    images: Tensor  # uint8 (N, C, H, W)
    targets: Tensor  # (N,)

    @property
    def names(self) -> list[str]:
        return list(self.loaded.datamodule.class_names)

    def normalize(self, pixels: Tensor) -> Tensor:
        """[0, 1] model-space pixels -> the network's input."""
        dm = self.loaded.datamodule
        return (pixels - dm.mean.to(pixels.device)) / dm.std.to(pixels.device)

    def pixels(self, index: Tensor) -> Tensor:
        """The chosen images as [0, 1] model-space pixels (B, C, S, S) on the device."""
        dm = self.loaded.datamodule
        return model_space(dm, dm.transform(self.images[index].to(self.loaded.device), train=False))

    def publish(self, fig: Any, name: str) -> Path:
        """`<name>.png` and the TensorBoard image `explain/<name>`."""
        image = figure_array(fig)  # rendered once for the PNG and TensorBoard
        for writer in self.writers:
            writer.add_image(f"explain/{name}", image, global_step=0, dataformats="HWC")
        return save_png(image, self.out / f"{name}.png")


def per_class_indices(targets: Tensor, per_class: int, num_classes: int, seed: int) -> list[Tensor]:
    """Up to `per_class` seeded random positions of each class, class by class."""
    g = torch.Generator().manual_seed(seed)
    return [pos[torch.randperm(len(pos), generator=g)[:per_class]]
            for pos in (torch.nonzero(targets == c).flatten() for c in range(num_classes))]


@torch.no_grad()
def _predict(ctx: Context, index: Tensor) -> Tensor:
    """(B, K) softmax of the chosen images (class logits come first in a multi-task head's outputs)."""
    k = len(ctx.names)
    return batched(lambda x: ctx.loaded.restored.net(x)[:, :k].softmax(1), ctx.images[index], ctx.loaded.datamodule,
                   ctx.loaded.device)


def _maps(ctx: Context, name: str, fn: Callable[[Tensor, Tensor], Tensor], overlay: bool) -> list[Path]:
    """Saliency or Grad-CAM for `per_class` images of every class: rows of (image, map) pairs, one class a row."""
    per_class = int(ctx.cfg.per_class)
    if per_class < 1:
        raise FerlabError(f"per_class must be >= 1, got {per_class}")
    groups = per_class_indices(ctx.targets, per_class, len(ctx.names), int(ctx.cfg.seed))
    missing = [n for n, g in zip(ctx.names, groups, strict=True) if not len(g)]
    if missing:
        log.info("%s: no %s images of class(es) %s", name, ctx.split, ", ".join(missing))
    groups = [g for g in groups if len(g)]  # a row per class that has images
    index = torch.cat(groups)
    probs = _predict(ctx, index)
    target = ctx.targets[index] if ctx.cfg.target == "label" else probs.argmax(1)
    pixels = ctx.pixels(index)
    maps = torch.cat([fn(p, t) for p, t in zip(pixels.split(GRAD_BATCH), target.split(GRAD_BATCH), strict=True)]).cpu()
    cells: list[Cell | None] = []
    row = 0
    for group in groups:
        for i in range(row, row + len(group)):
            true, pred = ctx.names[int(ctx.targets[index[i]])], ctx.names[int(probs[i].argmax())]
            title = f"{true}" + ("" if pred == true else f" ({pred})") + f" {float(probs[i].max()):.2f}"
            cells += [Cell(pixels[i].cpu(), title),
                      Cell(pixels[i].cpu(), name, overlay=maps[i]) if overlay else Cell(maps[i], name, cmap="hot")]
        cells += [None] * (2 * (per_class - len(group)))
        row += len(group)
    suptitle = (f"{name} of the {TARGET_WORDS[ctx.cfg.target]} class score, {ctx.split} split; "
                "title: true class (predicted if different) and confidence")
    return [ctx.publish(image_grid(cells, 2 * per_class, suptitle), name)]


def run_saliency(ctx: Context) -> list[Path]:
    """Report 002's saliency: |gradient of the class score w.r.t. the pixels|, max over channels."""
    from ferlab.analysis.attribution import saliency, scale_maps

    net = ctx.loaded.restored.net
    return _maps(ctx, "saliency", lambda p, t: scale_maps(saliency(net, p, t, ctx.normalize)), overlay=False)


def run_gradcam(ctx: Context) -> list[Path]:
    """Grad-CAM on the net's last spatial stage (`cam_layer`), drawn over each image."""
    from ferlab.analysis.attribution import grad_cam

    net = ctx.loaded.restored.net
    return _maps(ctx, "gradcam", lambda p, t: grad_cam(net, ctx.normalize(p), t), overlay=True)


def run_filters(ctx: Context) -> list[Path]:
    """Gradient ascent images for the first `filters.num_filters` filters of `filters.layer` (default: cam_layer)."""
    from ferlab.analysis.filters import find_layer, maximize_filters, num_channels

    opts, restored = ctx.cfg.filters, ctx.loaded.restored
    name, layer = find_layer(restored.net, opts.get("layer"))
    shape = (restored.in_chans, restored.image_size, restored.image_size)
    count = min(int(opts.num_filters), num_channels(restored.net, layer, shape, ctx.normalize))
    if count < 1 or int(opts.steps) < 1:
        raise FerlabError("filters.num_filters and filters.steps must be >= 1")
    images, start, end = maximize_filters(restored.net, layer, shape, list(range(count)), int(opts.steps),
                                          float(opts.lr), int(ctx.cfg.seed), ctx.normalize)
    cells = [Cell(images[k].cpu(), f"#{k}: {start[k]:.2f} -> {end[k]:.2f}") for k in range(count)]
    suptitle = f"filters of {name}: {opts.steps} steps of gradient ascent; mean activation start -> end"
    rows = [{"filter": k, "activation_start": float(start[k]), "activation_end": float(end[k])} for k in range(count)]
    json_path = write_json(ctx.out / "filters.json", {"layer": name, "steps": int(opts.steps), "lr": float(opts.lr),
                                                       "filters": rows})
    return [ctx.publish(image_grid(cells, min(8, count), suptitle), "filters"), json_path]


def run_misclassified(ctx: Context) -> list[Path]:
    """The `misclassified.count` most confident errors of the split, with true and predicted labels."""
    probs = _predict(ctx, torch.arange(len(ctx.targets)))
    confidence, preds = probs.max(1)
    wrong = torch.nonzero(preds != ctx.targets).flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][: int(ctx.cfg.misclassified.count)]
    rows = [{"index": int(i), "true": ctx.names[int(ctx.targets[i])], "pred": ctx.names[int(preds[i])],
             "confidence": float(confidence[i]), "p_true": float(probs[i, ctx.targets[i]])} for i in order]
    summary = {"split": ctx.split, "images": len(ctx.targets), "errors": len(wrong), "shown": rows}
    paths = [write_json(ctx.out / "misclassified.json", summary)]
    if not rows:
        log.info("no misclassified images in the %s split", ctx.split)
        return paths
    pixels = ctx.pixels(order).cpu()
    cells = [Cell(pixels[k], f"{r['true']} -> {r['pred']} {r['confidence']:.2f}") for k, r in enumerate(rows)]
    suptitle = f"most confident errors: {len(wrong)} of {len(ctx.targets)} {ctx.split} images wrong; true -> predicted"
    return [ctx.publish(image_grid(cells, 8, suptitle), "misclassified"), *paths]


@torch.no_grad()
def embed(ctx: Context, images: Tensor) -> tuple[Tensor, Tensor]:
    """(N, D) `forward_features` embeddings and (N, K) linear-head class logits of uint8 images."""
    net = ctx.loaded.restored.net
    if not hasattr(net, "forward_features") or not hasattr(net, "num_features"):
        raise FerlabError(f"{type(net).__name__} has no forward_features/num_features for prototypes")

    def both(x: Tensor) -> Tensor:
        features = net.forward_features(x)
        return torch.cat([features, net.forward_head(features)], 1)

    out = batched(both, images, ctx.loaded.datamodule, ctx.loaded.device)
    return out[:, : net.num_features], out[:, net.num_features : net.num_features + len(ctx.names)]


def run_prototypes(ctx: Context) -> list[Path]:
    """Report 001's prototype classifier beside the linear head: class means of train embeddings, nearest wins."""
    from ferlab.analysis.metrics import classification_report
    from ferlab.analysis.prototypes import class_sums, prototype_probs, prototypes_from

    train_images, train_targets = ctx.loaded.datamodule.splits["train"]
    sums, counts, step = 0, 0, PROTOTYPE_CHUNK
    for s in range(0, len(train_targets), step):  # running class sums: never every train embedding at once
        part = class_sums(embed(ctx, train_images[s : s + step])[0], train_targets[s : s + step], len(ctx.names))
        sums, counts = sums + part[0], counts + part[1]
    prototypes = prototypes_from(sums, counts)
    features, logits = embed(ctx, ctx.images)
    proto_preds = prototype_probs(features, prototypes).argmax(1)
    reports = {"linear head": classification_report(logits.argmax(1), ctx.targets, ctx.names),
               "prototypes": classification_report(proto_preds, ctx.targets, ctx.names)}
    result = {"split": ctx.split, "images": len(ctx.targets), "train_images": len(train_targets),
              "num_features": int(features.shape[1]),
              "agreement": float((proto_preds == logits.argmax(1)).float().mean()),
              "classifiers": {name: _summary(r) for name, r in reports.items()}}
    npz = atomic_write(ctx.out / "prototypes.npz", lambda tmp: _save_npz(tmp, prototypes, ctx.names))
    md = atomic_write_text(ctx.out / "prototypes.md", prototypes_markdown(result, ctx.names))
    for writer in ctx.writers:
        writer.add_text("explain/prototypes", md.read_text(), global_step=0)
    return [write_json(ctx.out / "prototypes.json", result), md, npz]


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": report["accuracy"], "macro_f1": report["macro"]["f1"], "weighted_f1": report["weighted"]["f1"],
            "f1": {name: row["f1"] for name, row in report["per_class"].items()}}


def _save_npz(path: Path, prototypes: Tensor, names: list[str]) -> None:
    np.savez(path, prototypes=prototypes.numpy(), class_names=np.array(names))


def prototypes_markdown(result: dict[str, Any], names: list[str]) -> str:
    """The two classifiers side by side: accuracy, macro/weighted F1 and per-class F1."""
    linear, proto = result["classifiers"]["linear head"], result["classifiers"]["prototypes"]
    lines = [f"# Prototype classifier vs linear head ({result['split']}, {result['images']} images)", "",
             f"Prototypes: mean `forward_features` embedding ({result['num_features']} dims) of each class over "
             f"{result['train_images']} train images; nearest prototype (Euclidean) wins. The two agree on "
             f"{result['agreement']:.1%} of the images.", "",
             "| | linear head | prototypes |", "|---|---:|---:|"]
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted F1")):
        lines.append(f"| {label} | {linear[key]:.4f} | {proto[key]:.4f} |")
    lines += [f"| F1 {n} | {_fmt(linear['f1'][n])} | {_fmt(proto['f1'][n])} |" for n in names]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


METHODS: dict[str, Callable[[Context], list[Path]]] = {
    "saliency": run_saliency,
    "gradcam": run_gradcam,
    "filters": run_filters,
    "misclassified": run_misclassified,
    "prototypes": run_prototypes,
}
