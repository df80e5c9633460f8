"""Annotated frames with OpenCV drawing: a box and "label prob" (and valence/arousal) per face, a bar per class,
optional FPS."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ferlab.infer.predictor import Face

# BGR, matplotlib's tab10 order: class k gets PALETTE[k % 10]
PALETTE = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
           (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple, bg: tuple | None) -> None:
    """Text with its baseline-left at `org`, on a filled background box when `bg` is given."""
    import cv2

    thick = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, FONT, scale, thick)
    if bg is not None:
        cv2.rectangle(img, (org[0], org[1] - h - base), (org[0] + w, org[1] + base), bg, cv2.FILLED)
    cv2.putText(img, text, org, FONT, scale, color, thick, cv2.LINE_AA)


def _bars(img: np.ndarray, face: Face, class_names: Sequence[str], scale: float) -> None:
    """One bar per class beside the box (right of it when it fits, else left), longest = probability 1."""
    import cv2

    x, y, w, h = face.box
    row = max(10, round(22 * scale))
    name_w, bar_w = round(90 * scale), round(110 * scale)
    panel_w = name_w + bar_w + 6
    left = x + w + 4 if x + w + 4 + panel_w <= img.shape[1] else max(0, x - 4 - panel_w)
    top = min(max(0, y), max(0, img.shape[0] - row * len(class_names)))
    overlay = img.copy()
    cv2.rectangle(overlay, (left, top), (left + panel_w, top + row * len(class_names)), (0, 0, 0), cv2.FILLED)
    cv2.addWeighted(overlay, 0.5, img, 0.5, 0, dst=img)  # translucent backdrop keeps the scene visible
    for k, (name, p) in enumerate(zip(class_names, face.probs, strict=True)):
        y0 = top + k * row
        _text(img, name[:9], (left + 3, y0 + row - 4), 0.4 * scale, (255, 255, 255), None)
        x0 = left + name_w
        cv2.rectangle(img, (x0, y0 + 3), (x0 + max(1, round(bar_w * float(p))), y0 + row - 3), PALETTE[k % 10], cv2.FILLED)


def annotate(
    frame: np.ndarray, faces: Sequence[Face], class_names: Sequence[str], fps: float | None = None,
    bars: bool = True,
) -> np.ndarray:
    """A copy of a BGR frame with every face's box, top label and probability, class bars and FPS."""
    import cv2

    img = frame.copy()
    scale = max(0.5, min(img.shape[:2]) / 600)  # readable on a 48 px crop and on a 1080p frame
    for face in faces:
        x, y, w, h = face.box
        color = PALETTE[list(class_names).index(face.label) % 10] if face.label else PALETTE[0]
        cv2.rectangle(img, (x, y), (x + w, y + h), color, max(1, round(2 * scale)))
        for px, py in face.landmarks or []:  # the detector's five points, when it gives them
            cv2.circle(img, (round(px), round(py)), max(1, round(2 * scale)), color, cv2.FILLED)
        label_y = y - 6 if y - 6 > 20 * scale else y + h + round(20 * scale)
        _text(img, face.caption(), (x, label_y), 0.6 * scale, (255, 255, 255), color)
        if bars and class_names:
            _bars(img, face, class_names, scale)
    if fps is not None:
        _text(img, f"{fps:.1f} FPS", (8, round(28 * scale)), 0.7 * scale, (255, 255, 255), (0, 0, 0))
    return img
