"""Face detectors (`detector=haar|none`): a BGR frame in, face boxes (N, 4) int [x, y, w, h] out.

Both expose `margin`, the fraction of the box side added on every side when the face is cropped
(FER crops show some hair and chin around the features a Haar box covers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlab.errors import FerlabError
from ferlab.infer.media import cv2_quiet

HAAR_DEFAULT = "haarcascade_frontalface_default.xml"


class HaarFaceDetector:
    """OpenCV's Viola-Jones cascade (the frontal-face Haar cascade shipped inside opencv-python).

    Args:
        cascade: a file name in `cv2.data.haarcascades` (e.g. haarcascade_frontalface_alt2.xml) or a path.
        scale_factor: step between detection scales (1.05 finds more, 1.3 is faster).
        min_neighbors: overlapping raw detections needed to keep a face (higher: fewer false faces).
        min_size: smallest face side to look for, in frame pixels (larger is faster: the many small
            scales are skipped). The cascade's window is 24 px, so in a frame shrunk by `max_side` faces
            under 24 px of the shrunk image are not found whatever this says.
        max_side: frames whose longer side exceeds this are shrunk before detection (speed; None: never);
            boxes are returned in the original frame's pixels.
        equalize: histogram-equalize the gray frame first (helps in poor light).
        margin: crop margin, fraction of the box side.
    """

    def __init__(
        self,
        *,
        cascade: str = HAAR_DEFAULT,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 24,
        max_side: int | None = 1280,
        equalize: bool = True,
        margin: float = 0.1,
    ) -> None:
        cv2 = cv2_quiet()
        if not hasattr(cv2, "CascadeClassifier"):
            raise FerlabError(
                f"OpenCV {cv2.__version__} has no Haar cascades; install opencv-python-headless<5 or use detector=none"
            )
        if scale_factor <= 1 or min_neighbors < 0 or min_size < 1 or margin < 0:
            raise FerlabError("detector: need scale_factor > 1, min_neighbors >= 0, min_size >= 1, margin >= 0")
        path = Path(cascade) if Path(cascade).is_file() else Path(cv2.data.haarcascades) / cascade
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise FerlabError(f"detector.cascade: cannot load a cascade from {cascade} (looked in {path.parent})")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self.max_side, self.equalize, self.margin = max_side, equalize, margin

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Faces in a BGR (H, W, 3) frame as int (N, 4) [x, y, w, h], sorted left to right."""
        import cv2

        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        scale = 1.0
        if self.max_side and max(gray.shape) > self.max_side:
            scale = self.max_side / max(gray.shape)
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        min_side = max(24, round(self.min_size * scale))  # 24: the cascade's own window
        found = self.classifier.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        boxes = np.round(np.asarray(found, dtype=np.float64).reshape(-1, 4) / scale).astype(np.int64)
        return boxes[np.argsort(boxes[:, 0], kind="stable")]


class WholeImage:
    """No detection: the whole frame is one face (for images that are already face crops)."""

    margin = 0.0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One box covering the frame: int (1, 4) [0, 0, W, H]."""
        h, w = frame.shape[:2]
        return np.array([[0, 0, w, h]], dtype=np.int64)
