"""Cross-dataset evaluation: a checkpoint on another dataset's images, classes matched by name.

The FER literature's generalisation table (a RAF-DB model on FER2013, FER+ or AffectNet-7, ...). Class names
are compared through `ferlab.labels.canonical` (FER2013's "angry" is RAF-DB's "anger"). Images of a class the
model does not have (AffectNet's or FER+'s contempt for a 7-class model) are dropped and counted; the model may
still predict a class the data lacks, and such a prediction is an error. Scores are in the model's classes:
accuracy over the kept images, per-class rows for every model class, macro averages over the shared classes
(those that occur in the split), as scikit-learn's with `labels=` the shared classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ferlab.errors import FerlabError
from ferlab.labels import canonical

MIN_SHARED = 2  # fewer shared classes is no evaluation of a classifier


@dataclass
class ClassMap:
    """How a dataset's classes map onto a model's: `to_model[d]` is the model class id of data class d, or None."""

    model_data: str
    data: str
    model_classes: list[str]
    data_classes: list[str]
    to_model: list[int | None]

    @property
    def shared(self) -> list[tuple[str, str]]:
        """(model class, data class) pairs, in the model's order."""
        pairs = [(self.model_classes[m], d) for d, m in zip(self.data_classes, self.to_model, strict=True)
                 if m is not None]
        return sorted(pairs, key=lambda p: self.model_classes.index(p[0]))

    @property
    def data_only(self) -> list[str]:
        return [d for d, m in zip(self.data_classes, self.to_model, strict=True) if m is None]

    @property
    def model_only(self) -> list[str]:
        mapped = {m for m in self.to_model if m is not None}
        return [name for i, name in enumerate(self.model_classes) if i not in mapped]


def _one_each(names: list[str], where: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if canonical(name) in index:
            raise FerlabError(f"{where} classes {names}: {names[index[canonical(name)]]!r} and {name!r} are the same "
                              "expression (ferlab.labels.SYNONYMS); cannot match classes by name")
        index[canonical(name)] = i
    return index


def match_classes(model_classes: list[str], data_classes: list[str], model_data: str, data: str) -> ClassMap:
    """Match a dataset's classes to a model's by name; too little overlap is one line listing both sets.

    Enough: at least MIN_SHARED classes and at least half of the model's classes in the data."""
    model_index = _one_each(list(model_classes), f"model ({model_data})")
    _one_each(list(data_classes), f"data {data!r}")
    to_model = [model_index.get(canonical(name)) for name in data_classes]
    shared = sum(m is not None for m in to_model)
    if shared < max(MIN_SHARED, math.ceil(len(model_classes) / 2)):
        raise FerlabError(
            f"cross-dataset eval: the model's classes ({model_data}: {', '.join(model_classes)}) and the data's "
            f"({data}: {', '.join(data_classes)}) share {shared} by name; at least "
            f"{max(MIN_SHARED, math.ceil(len(model_classes) / 2))} are needed (names are matched through "
            "ferlab.labels.SYNONYMS)")
    return ClassMap(model_data, data, list(model_classes), list(data_classes), to_model)


def map_sets(sets: dict[str, tuple[Any, Tensor]], cmap: ClassMap) -> tuple[dict[str, tuple[Any, Tensor]],
                                                                          dict[str, dict[str, int]]]:
    """Each split's images of shared classes with targets as model class ids, and per split the images dropped
    by data class name."""
    lut = torch.tensor([-1 if m is None else m for m in cmap.to_model], dtype=torch.long)
    mapped_sets, dropped = {}, {}
    for prefix, (images, targets) in sets.items():
        mapped = lut[targets.long()]
        keep = mapped >= 0
        counts = torch.bincount(targets.long()[~keep], minlength=len(cmap.data_classes)).tolist()
        dropped[prefix] = {name: n for name, n in zip(cmap.data_classes, counts, strict=True) if n}
        if not bool(keep.any()):
            raise FerlabError(f"cross-dataset eval: the {prefix} split of {cmap.data!r} has no image of a class the "
                              f"model knows ({', '.join(cmap.model_classes)})")
        mapped_sets[prefix] = (images.subset(keep), mapped[keep])
    return mapped_sets, dropped


def shared_macro(report: dict[str, Any], shared: list[str]) -> dict[str, float]:
    """Macro precision/recall/F1 over the shared classes that occur in the split (labels or predictions)."""
    rows = [report["per_class"][name] for name in shared if report["per_class"][name]["f1"] is not None]
    return {m: (sum(r[m] for r in rows) / len(rows) if rows else 0.0) for m in ("precision", "recall", "f1")}


def cross_section(cmap: ClassMap, dropped: dict[str, dict[str, int]], reports: dict[str, dict]) -> dict[str, Any]:
    """report.json's `cross_dataset`: the mapping, the images dropped and the predictions of classes the data lacks,
    per split. Replaces each split's macro averages by those over the shared classes."""
    shared_model = [m for m, _ in cmap.shared]
    model_only = [cmap.model_classes.index(n) for n in cmap.model_only]
    splits = {}
    for prefix, report in reports.items():
        if "per_class" not in report:  # a head without classes: nothing to match
            continue
        report["macro"] = shared_macro(report, shared_model)
        counts = report["confusion_matrix"]
        splits[prefix] = {"images": report["num_images"], "dropped": sum(dropped[prefix].values()),
                          "dropped_by_class": dropped[prefix],
                          "predicted_missing_classes": sum(row[j] for row in counts for j in model_only)}
    shared = [{"model": m, "data": d} for m, d in cmap.shared]
    return {"model_data": cmap.model_data, "data": cmap.data, "shared": shared, "model_only": cmap.model_only, "data_only": cmap.data_only, "splits": splits}


def summary_line(section: dict[str, Any]) -> str:
    """"cross-dataset: model rafdb -> data affectnet, 7 shared classes, 12 images dropped (contempt)"."""
    dropped = sum(s["dropped"] for s in section["splits"].values())
    why = f" ({', '.join(section['data_only'])})" if section["data_only"] else ""
    return (f"cross-dataset: model {section['model_data']} -> data {section['data']}, {len(section['shared'])} shared "
            f"classes, {dropped} images dropped{why}")


def cross_markdown(section: dict[str, Any]) -> list[str]:
    """report.md's cross-dataset section."""
    renamed = [f"{p['data']} -> {p['model']}" for p in section["shared"] if p["data"] != p["model"]]
    lines = ["## Cross-dataset", "", summary_line(section) + ".", "",
             f"Classes matched by name{': ' + ', '.join(renamed) if renamed else ''}. "
             f"Model classes the data lacks: {', '.join(section['model_only']) or 'none'} (predicting them is an "
             f"error); data classes the model lacks: {', '.join(section['data_only']) or 'none'} (their images are dropped). "
             "Macro averages are over the shared classes.", "",
             "| split | images scored | images dropped | predictions of classes the data lacks |",
             "|---|---:|---:|---:|"]
    lines += [f"| {p} | {s['images']} | {s['dropped']} | {s['predicted_missing_classes']} |"
              for p, s in section["splits"].items()]
    return [*lines, ""]
