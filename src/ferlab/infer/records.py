"""What `ferlab predict` found, written as predictions.csv (one row per face) and predictions.json.

predictions.csv columns: file, frame (0 for images), face (index in the frame, left to right),
x, y, w, h (box in pixels), label, prob (top class and its probability), p_<class> for every class, and
valence, arousal for a model with valence/arousal outputs (a VA-only model has no label, prob or p_ columns).
predictions.json: model facts, a summary (counts, files without a face, skipped files and why) and
one entry per classified frame with its faces, boxes, all class probabilities and valence/arousal.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

from ferlab.infer.predictor import Face
from ferlab.runs.io import atomic_write_text
from ferlab.runs.runfiles import write_json

OUTPUT_FILES = ("predictions.csv", "predictions.json")


class PredictionLog:
    """Collects faces per file and frame, files without faces, and skipped files."""

    def __init__(self, class_names: list[str], model: dict[str, Any], va: bool = False) -> None:
        self.class_names, self.model, self.va = class_names, model, va
        self.rows: list[list[Any]] = []
        self.entries: list[dict[str, Any]] = []
        self.no_face: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.ignored: list[str] = []
        self.files = 0
        self.frames_without_face: Counter[str] = Counter()

    def add(self, file: str, frame: int, faces: list[Face], time_s: float | None = None) -> None:
        """Record one classified frame (an image is frame 0)."""
        for i, f in enumerate(faces):
            classes = [f.label, f"{f.prob:.6f}", *(f"{p:.6f}" for p in f.probs)] if self.class_names else []
            va = [f"{v:.6f}" for v in f.va] if self.va and f.va is not None else []
            self.rows.append([file, frame, i, *f.box, *classes, *va])
        entry: dict[str, Any] = {"file": file, "frame": frame}
        if time_s is not None:
            entry["time_s"] = round(time_s, 4)
        entry["faces"] = [f.as_dict(self.class_names) for f in faces]
        self.entries.append(entry)
        if not faces:
            self.frames_without_face[file] += 1

    def finish_file(self, file: str, frames: int) -> None:
        """Close a file: counts it, and reports it when none of its frames had a face."""
        self.files += 1
        if frames and self.frames_without_face[file] == frames:
            self.no_face.append(file)

    def skip(self, file: str, reason: str) -> None:
        """A file that could not be read; processing goes on."""
        self.skipped.append({"file": file, "reason": reason})

    def summary(self) -> dict[str, Any]:
        """Counts and lists for the JSON and the printed table."""
        labels = Counter(row[7] for row in self.rows) if self.class_names else Counter()
        return {
            "files": self.files,
            "frames": len(self.entries),
            "faces": len(self.rows),
            "labels": {name: labels.get(name, 0) for name in self.class_names},
            "no_face": self.no_face,
            "frames_without_face": dict(self.frames_without_face),
            "skipped": self.skipped,
            "ignored": self.ignored,
        }

    def write(self, out_dir: Path) -> list[Path]:
        """predictions.csv and predictions.json in `out_dir`, each written atomically."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        classes = ["label", "prob", *(f"p_{c}" for c in self.class_names)] if self.class_names else []
        writer.writerow(["file", "frame", "face", "x", "y", "w", "h", *classes,
                         *(["valence", "arousal"] if self.va else [])])
        writer.writerows(self.rows)
        csv_path = atomic_write_text(out_dir / OUTPUT_FILES[0], buf.getvalue())
        doc = {"model": self.model, "class_names": self.class_names, "summary": self.summary(),
               "predictions": self.entries}
        return [csv_path, write_json(out_dir / OUTPUT_FILES[1], doc)]
