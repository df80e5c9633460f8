"""Detect, crop, classify: one BGR frame in, one `Face` per detected face out (all faces as one batch)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferlab.infer.backends import LoadedModel
from ferlab.infer.preprocess import to_model_input


@dataclass
class Face:
    """One classified face. box: [x, y, w, h] in frame pixels; probs: (K,) softmax over the class names (empty,
    with label "" and prob NaN, for a valence/arousal-only model); va: (valence, arousal) where the model has them."""

    box: list[int]
    probs: np.ndarray
    label: str
    prob: float
    va: tuple[float, float] | None = None

    def as_dict(self, class_names: list[str]) -> dict[str, Any]:
        """Plain values for JSON."""
        out: dict[str, Any] = {"box": self.box}
        if class_names:
            out.update(label=self.label, prob=float(self.prob),
                       probs={name: float(p) for name, p in zip(class_names, self.probs, strict=True)})
        if self.va is not None:
            out.update(valence=self.va[0], arousal=self.va[1])
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
    """A face detector plus a loaded model (any backend); `predictor(frame)` -> list of `Face`."""

    def __init__(self, model: LoadedModel, detector: Any) -> None:
        self.model, self.detector = model, detector
        self.head = model.head
        self.class_names = model.class_names if self.head.has_classes else []  # a VA-only model has none
        self.timing = Timing()

    def classify(self, frame: np.ndarray, boxes: np.ndarray) -> list[Face]:
        """Classify the given boxes of a BGR frame in one batch."""
        if len(boxes) == 0:
            return []
        x = to_model_input(frame, boxes, self.model.spec, self.detector.margin)  # (N, C, S, S)
        out = np.asarray(self.model.run(x), dtype=np.float64)  # (N, K), (N, 2) or (N, K + 2)
        if out.ndim != 2 or out.shape[1] != self.head.outputs:
            raise RuntimeError(f"model returned outputs of shape {out.shape}, expected (N, {self.head.outputs})")
        logits, va = self.head.split(out)
        probs = None if logits is None else softmax(logits)
        faces = []
        for i, box in enumerate(boxes):
            values = None if va is None else (float(va[i, 0]), float(va[i, 1]))
            if probs is None:
                faces.append(Face([int(v) for v in box], np.zeros(0), "", float("nan"), values))
            else:
                k = int(probs[i].argmax())
                faces.append(Face([int(v) for v in box], probs[i], self.class_names[k], float(probs[i, k]), values))
        return faces

    def __call__(self, frame: np.ndarray) -> list[Face]:
        """Detect every face of a BGR (H, W, 3) frame and classify them together."""
        t0 = time.perf_counter()
        boxes = self.detector(frame)
        t1 = time.perf_counter()
        faces = self.classify(frame, boxes)
        t2 = time.perf_counter()
        self.timing.detect += t1 - t0
        self.timing.classify += t2 - t1
        self.timing.frames += 1
        self.timing.faces += len(faces)
        return faces
