"""Face detectors (`detector=mtcnn|haar|haar_fast|none|auto`): a BGR frame in, faces out.

Every detector answers two calls: `detector.detect(frame)` -> `Detections` (int boxes (N, 4) [x, y, w, h], scores
(N,), five landmarks (N, 5, 2) or None), and `detector(frame)` -> the boxes alone (what callers used before
landmarks existed). The five landmarks, in image coordinates, are in the order of the ArcFace template
(`ferlab.infer.align`): the eye on the image's left (the subject's right eye), the eye on the image's right, the
nose tip, the mouth corner on the image's left, the mouth corner on the image's right.

Each detector also carries how its faces become model inputs: `margin` (the crop margin around a box, a fraction
of its side), `align` (warp the five landmarks onto the template instead of cropping the box) and `align_margin`
(the template's margin, see `ferlab.infer.align.template`); `ferlab.infer.preprocessing` records them in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.errors import FerlabError
from ferlab.infer.media import cv2_quiet

HAAR_DEFAULT = "haarcascade_frontalface_default.xml"


@dataclass
class Detections:
    """Faces of one frame, left to right. boxes: int64 (N, 4) [x, y, w, h]; scores: float32 (N,) (1.0 where the
    detector gives none); landmarks: float32 (N, 5, 2) (x, y) in the template's order, or None (no landmarks)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, index: Any) -> Detections:
        """The faces at `index` (an int array or slice), in that order."""
        marks = None if self.landmarks is None else self.landmarks[index]
        return Detections(self.boxes[index], self.scores[index], marks)

    def largest(self) -> Detections:
        """Only the face with the largest box (none if there is none)."""
        if not len(self):
            return self
        return self.take(np.array([int(np.argmax(self.boxes[:, 2] * self.boxes[:, 3]))]))


def left_to_right(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray | None = None) -> Detections:
    """A `Detections` sorted by the boxes' x (the order predictions.csv numbers faces in)."""
    order = np.argsort(boxes[:, 0], kind="stable")
    return Detections(boxes[order].astype(np.int64), scores[order].astype(np.float32),
                      None if landmarks is None else landmarks[order].astype(np.float32))


class FaceDetector:
    """The surface every detector shares; subclasses implement `detect`.

    margin: crop margin (fraction of the box side) when faces are cropped by their box; align: warp the landmarks
    onto the template instead (needs a detector with landmarks); align_margin: the template's margin.
    """

    name = "detector"  # the conf/detector family, recorded in checkpoints
    has_landmarks = False
    margin: float = 0.0
    align: bool = False
    align_margin: float = 0.0

    def _set_crop(self, margin: float, align: bool, align_margin: float) -> None:
        if margin < 0 or align_margin < 0:
            raise FerlabError(f"detector: need margin >= 0 and align_margin >= 0, got {margin} and {align_margin}")
        if align and not self.has_landmarks:
            raise FerlabError(f"detector.align=true needs landmarks, which detector={self.name} does not give; "
                              "use detector=mtcnn")
        self.margin, self.align, self.align_margin = float(margin), bool(align), float(align_margin)

    def detect(self, frame: np.ndarray) -> Detections:
        raise NotImplementedError

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Faces in a BGR (H, W, 3) frame as int (N, 4) [x, y, w, h], sorted left to right."""
        return self.detect(frame).boxes

    def settings(self) -> dict[str, Any]:
        """The constructor arguments, plain values (recorded in checkpoints, rebuilt by `from_record`)."""
        return {}


class HaarFaceDetector(FaceDetector):
    """OpenCV's Viola-Jones cascade (the frontal-face Haar cascade shipped inside opencv-python). No landmarks;
    scores are 1.0.

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
        align: must stay false (Haar gives no landmarks); accepted so every detector takes the same keys.
    """

    name = "haar"

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
        align: bool = False,
    ) -> None:
        cv2 = cv2_quiet()
        if not hasattr(cv2, "CascadeClassifier"):
            raise FerlabError(
                f"OpenCV {cv2.__version__} has no Haar cascades; install opencv-python-headless<5 or use detector=none"
            )
        if scale_factor <= 1 or min_neighbors < 0 or min_size < 1:
            raise FerlabError("detector: need scale_factor > 1, min_neighbors >= 0, min_size >= 1, margin >= 0")
        self._set_crop(margin, align, 0.0)
        path = Path(cascade) if Path(cascade).is_file() else Path(cv2.data.haarcascades) / cascade
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise FerlabError(f"detector.cascade: cannot load a cascade from {cascade} (looked in {path.parent})")
        self.cascade = cascade
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self.max_side, self.equalize = max_side, equalize

    def detect(self, frame: np.ndarray) -> Detections:
        """Faces in a BGR (H, W, 3) frame, left to right; no landmarks."""
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
        return left_to_right(boxes, np.ones(len(boxes), np.float32))

    def settings(self) -> dict[str, Any]:
        return {"cascade": self.cascade, "scale_factor": self.scale_factor, "min_neighbors": self.min_neighbors,
                "min_size": self.min_size, "max_side": self.max_side, "equalize": self.equalize,
                "margin": self.margin}


class WholeImage(FaceDetector):
    """No detection: the whole frame is one face (for images that are already face crops)."""

    name = "none"
    margin = 0.0

    def detect(self, frame: np.ndarray) -> Detections:
        """One box covering the frame: [0, 0, W, H], score 1."""
        h, w = frame.shape[:2]
        return Detections(np.array([[0, 0, w, h]], dtype=np.int64), np.ones(1, np.float32))


def detect_faces(detector: Any, frame: np.ndarray) -> Detections:
    """`detector.detect(frame)`, or for a detector of the user's own that only returns boxes, those boxes with
    scores 1 and no landmarks."""
    if hasattr(detector, "detect"):
        return detector.detect(frame)
    boxes = np.asarray(detector(frame), dtype=np.int64).reshape(-1, 4)
    return Detections(boxes, np.ones(len(boxes), np.float32))
