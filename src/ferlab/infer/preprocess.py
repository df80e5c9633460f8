"""Face crops to a model's input: the one conversion used by the PyTorch, TorchScript and ONNX paths.

Mirrors the training pipeline (`FERDataModule.transform`): pixels to [0, 1], the model's channels
(gray by ITU-R 601 luminance, like the datamodule; replicated when a gray-trained model takes 3 channels),
its square size, then (x - mean) / std with the statistics stored in the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ferlab.errors import FerlabError

COLORS = ("auto", "gray", "rgb")


@dataclass(frozen=True)
class InputSpec:
    """What a network takes. gray: feed luminance (replicated to in_chans) instead of RGB colour."""

    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gray: bool

    @classmethod
    def build(cls, in_chans: int, image_size: int, mean: Any, std: Any, color: str = "auto") -> InputSpec:
        """color: auto (gray for 1-channel models, RGB for 3), gray (e.g. FER2013-trained 3-channel models), rgb."""
        if color not in COLORS:
            raise FerlabError(f"color: expected one of {', '.join(COLORS)}, got {color!r}")
        if in_chans not in (1, 3):
            raise FerlabError(f"the model takes {in_chans} channels; only 1 (gray) or 3 (RGB) can be fed")
        if color == "rgb" and in_chans == 1:
            raise FerlabError("color=rgb needs a 3-channel model; this one takes gray (1 channel)")
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) == 1:
            mean, std = mean * in_chans, std * in_chans
        return cls(in_chans, int(image_size), tuple(mean), tuple(std), gray=color == "gray" or in_chans == 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (stored in exported models)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def crop(frame: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """The square around a box grown by `margin` per side; parts outside the frame repeat its border."""
    import cv2

    x, y, w, h = (float(v) for v in box)
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    center = (x + w / 2 - 0.5, y + h / 2 - 0.5)  # getRectSubPix centres are in pixel coordinates
    return cv2.getRectSubPix(frame, (side, side), center)


def box_face(frame: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The square crop around a box (grown by `margin` per side) resized to size x size."""
    import cv2

    face = crop(frame, box, margin)
    shrink = face.shape[0] > size
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def face_crops(frame: np.ndarray, boxes: np.ndarray, size: int, margin: float,
               landmarks: np.ndarray | None = None, align_margin: float = 0.0) -> list[np.ndarray]:
    """One size x size crop per face of `frame` (any channels): by its box grown by `margin`, or, with (N, 5, 2)
    `landmarks`, aligned onto the ArcFace template with `align_margin` (`ferlab.infer.align`)."""
    from ferlab.infer.align import align_face

    if landmarks is not None:
        return [align_face(frame, marks, size, align_margin) for marks in landmarks]
    return [box_face(frame, box, size, margin) for box in boxes]


def to_model_input(frame: np.ndarray, boxes: np.ndarray, spec: InputSpec, margin: float,
                   landmarks: np.ndarray | None = None, align_margin: float = 0.0) -> np.ndarray:
    """BGR (H, W, 3) uint8 frame and (N, 4) boxes -> normalized float32 (N, C, S, S); with (N, 5, 2) `landmarks`
    the faces are aligned instead of cropped by their boxes (see `face_crops`)."""
    import cv2

    frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY if spec.gray else cv2.COLOR_BGR2RGB)
    s = spec.image_size
    out = np.empty((len(boxes), s, s, 1 if spec.gray else 3), dtype=np.float32)
    for i, face in enumerate(face_crops(frame, boxes, s, margin, landmarks, align_margin)):
        out[i] = face.reshape(s, s, -1)
    x = out.transpose(0, 3, 1, 2) / np.float32(255)  # (N, C0, S, S) in [0, 1]
    if x.shape[1] != spec.in_chans:
        x = np.repeat(x, spec.in_chans, axis=1)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)
