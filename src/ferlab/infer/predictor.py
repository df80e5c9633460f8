"""Detect, crop, classify: one BGR frame in, one `Face` per detected face out (all faces as one batch)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferlab.infer.backends import LoadedModel
from ferlab.infer.detect import Detections, detect_faces
from ferlab.infer.preprocess import to_model_input


@dataclass
class Face:
    """One classified face. box: [x, y, w, h] in frame pixels; probs: (K,) softmax over the class names (empty,
    with label "" and prob NaN, for a valence/arousal-only model); va: (valence, arousal) where the model has them;
    score: the detector's confidence (1.0 where it gives none); landmarks: five [x, y] (template order) or None."""

    box: list[int]
    probs: np.ndarray
    label: str
    prob: float
    va: tuple[float, float] | None = None
    score: float = 1.0
    landmarks: list[list[float]] | None = None

    def as_dict(self, class_names: list[str]) -> dict[str, Any]:
        """Plain values for JSON."""
        out: dict[str, Any] = {"box": self.box}
        if class_names:
            out.update(label=self.label, prob=float(self.prob),
                       probs={name: float(p) for name, p in zip(class_names, self.probs, strict=True)})
        if self.va is not None:
            out.update(valence=self.va[0], arousal=self.va[1])
        out["score"] = round(float(self.score), 6)
        if self.landmarks is not None:
            out["landmarks"] = self.landmarks
        return out

    def caption(self) -> str:
        """"happy 0.93", "happy 0.93 V+0.61 A+0.20" or "V+0.61 A+0.20": what the annotated image shows."""
        parts = [f"{self.label} {self.prob:.2f}"] if self.label else []
        return " ".join(parts + ([f"V{self.va[0]:+.2f} A{self.va[1]:+.2f}"] if self.va is not None else []))


@dataclass
class Timing:
    """Seconds spent per stage, summed over the frames seen."""

    detect: float = 0.0
    classify: float = 0.0
    frames: int = 0
    faces: int = 0


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, stable for large values."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """A face detector plus a loaded model (any backend); `predictor(frame)` -> list of `Face`.

    Faces are cropped by their boxes (grown by `detector.margin`), or aligned from their landmarks when the
    detector says `align` (onto the template with `detector.align_margin`).
    """

    def __init__(self, model: LoadedModel, detector: Any) -> None:
        self.model, self.detector = model, detector
        self.head = model.head
        self.class_names = model.class_names if self.head.has_classes else []  # a VA-only model has none
        self.timing = Timing()

    def classify(self, frame: np.ndarray, found: Detections | np.ndarray) -> list[Face]:
        """Classify the given faces (a `Detections`, or bare (N, 4) boxes) of a BGR frame in one batch."""
        if not isinstance(found, Detections):
            boxes = np.asarray(found, dtype=np.int64).reshape(-1, 4)
            found = Detections(boxes, np.ones(len(boxes), np.float32))
        if len(found) == 0:
            return []
        aligned = bool(getattr(self.detector, "align", False)) and found.landmarks is not None
        x = to_model_input(frame, found.boxes, self.model.spec, getattr(self.detector, "margin", 0.0),
                           found.landmarks if aligned else None,
                           getattr(self.detector, "align_margin", 0.0))  # (N, C, S, S)
        out = np.asarray(self.model.run(x), dtype=np.float64)  # (N, K), (N, 2) or (N, K + 2)
        if out.ndim != 2 or out.shape[1] != self.head.outputs:
            raise RuntimeError(f"model returned outputs of shape {out.shape}, expected (N, {self.head.outputs})")
        logits, va = self.head.split(out)
        probs = None if logits is None else softmax(logits)
        marks = [None] * len(found) if found.landmarks is None else np.round(found.landmarks.astype(np.float64), 2).tolist()
        faces = []
        for i, (box, score) in enumerate(zip(found.boxes, found.scores, strict=True)):
            values = None if va is None else (float(va[i, 0]), float(va[i, 1]))
            box = [int(v) for v in box]
            if probs is None:
                faces.append(Face(box, np.zeros(0), "", float("nan"), values, float(score), marks[i]))
            else:
                k = int(probs[i].argmax())
                faces.append(Face(box, probs[i], self.class_names[k], float(probs[i, k]), values, float(score), marks[i]))
        return faces

    def __call__(self, frame: np.ndarray) -> list[Face]:
        """Detect every face of a BGR (H, W, 3) frame and classify them together."""
        t0 = time.perf_counter()
        found = detect_faces(self.detector, frame)
        t1 = time.perf_counter()
        faces = self.classify(frame, found)
        t2 = time.perf_counter()
        self.timing.detect += t1 - t0
        self.timing.classify += t2 - t1
        self.timing.frames += 1
        self.timing.faces += len(faces)
        return faces
