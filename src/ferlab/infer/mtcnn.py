"""MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks"): boxes, scores and five landmarks from three small networks, on the CPU.

The networks ship inside ferlab as ONNX (`ferlab/infer/weights/mtcnn_{pnet,rnet,onet}.onnx`, 2 MB, MIT): the
released weights of the `facenet-pytorch` 2.6.0 wheel, converted by `ferlab.infer.mtcnn_convert` (origin, licences
and sha256 in `weights/NOTICE`). OpenCV's DNN module runs them (twice as fast as PyTorch at one thread on these
small networks); nothing downloads.

The cascade: P-Net slides over an image pyramid (scale step `factor`, smallest face `min_size`), R-Net re-scores
24x24 crops of its candidates, O-Net 48x48 crops and places the landmarks. Images go in as RGB, (x - 127.5) / 128.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.errors import FerlabError
from ferlab.infer.detect import Detections, FaceDetector, left_to_right

WEIGHTS = Path(__file__).parent / "weights"
NETS = ("pnet", "rnet", "onet")
OUTPUTS = ("prob", "offsets", "landmarks")  # the output names mtcnn_convert gives the files


def load_net(name: str, weights_dir: Path = WEIGHTS) -> Any:
    """An OpenCV DNN network read from `mtcnn_<name>.onnx`; a missing or unreadable file is one line."""
    import cv2

    path = weights_dir / f"mtcnn_{name}.onnx"
    try:
        net = cv2.dnn.readNetFromONNX(str(path))
    except cv2.error as e:
        raise FerlabError(f"MTCNN network {path} cannot be loaded: {str(e).strip().splitlines()[-1]}") from None
    if net.empty():
        raise FerlabError(f"MTCNN network {path} cannot be loaded")
    return net


def run_net(net: Any, x: np.ndarray, outputs: int) -> list[np.ndarray]:
    """The first `outputs` named outputs of a network for a float32 (B, 3, H, W) batch, the face probability
    (B, ...) first."""
    net.setInput(x)
    prob, *rest = net.forward(list(OUTPUTS[:outputs]))
    return [prob[:, 1], *rest]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression of (N, 4) [x1, y1, x2, y2] boxes, best first.
    by_min: overlap measured on the smaller box (MTCNN's last stage), else intersection over union."""
    order, keep = np.argsort(-scores, kind="stable"), []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        over = inter / (np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter)
        order = rest[over <= iou]
    return np.array(keep, dtype=np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) [x1, y1, x2, y2] grown to squares around the same centres."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def shift(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by the networks' offsets (fractions of the box side)."""
    wh = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
    return boxes + offsets * wh


def normalized(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) RGB -> float32 (B, 3, H, W), (x - 127.5) / 128 as the networks were trained."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32(0.0078125) - np.float32(
        127.5 * 0.0078125)


def crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box of an RGB (H, W, 3) uint8 image resized to size x size (zeros outside the image), normalized:
    float32 (N, 3, size, size)."""
    import cv2

    h, w = image.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(np.int64)):
        ix1, iy1, ix2, iy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if ix2 <= ix1 or iy2 <= iy1:
            continue
        patch = image[iy1:iy2, ix1:ix2]
        if (ix1, iy1, ix2, iy2) != (x1, y1, x2, y2):  # part of the box is off the image: zeros there
            patch = cv2.copyMakeBorder(patch, iy1 - y1, y2 - iy2, ix1 - x1, x2 - ix2, cv2.BORDER_CONSTANT, value=0)
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return normalized(out)


class MTCNNDetector(FaceDetector):
    """MTCNN faces with five landmarks (`detector=mtcnn`).

    Args:
        min_size: smallest face side to look for, in frame pixels (larger: fewer pyramid levels, faster).
        thresholds: the three networks' face-probability thresholds (P-Net, R-Net, O-Net).
        factor: scale step of the image pyramid (0.709: each level has half the pixels of the one before).
        max_side: frames with a longer side are shrunk to it before detection (speed; null: never); boxes and
            landmarks are returned in the frame's own pixels.
        margin: crop margin (fraction of the box side) when faces are cropped by their box (align=false).
        align: warp each face's landmarks onto the ArcFace template (`ferlab.infer.align`) instead.
        align_margin: the template's margin on every side, a fraction of its side (0: ArcFace's tight 112x112 crop).
    """

    name = "mtcnn"
    has_landmarks = True

    def __init__(self, *, min_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9),
                 factor: float = 0.709, max_side: int | None = 1280, margin: float = 0.1, align: bool = False,
                 align_margin: float = 0.1) -> None:
        thresholds = tuple(float(t) for t in thresholds)
        if min_size < 12 or not 0 < factor < 1 or len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise FerlabError("detector: mtcnn needs min_size >= 12, 0 < factor < 1 and three thresholds in [0, 1]")
        self._set_crop(margin, align, align_margin)
        self.min_size, self.thresholds, self.factor, self.max_side = int(min_size), thresholds, float(factor), max_side
        self.pnet, self.rnet, self.onet = (load_net(n) for n in NETS)

    def settings(self) -> dict[str, Any]:
        return {"min_size": self.min_size, "thresholds": list(self.thresholds), "factor": self.factor,
                "max_side": self.max_side, "margin": self.margin, "align": self.align,
                "align_margin": self.align_margin}

    def _candidates(self, image: np.ndarray, min_size: float) -> np.ndarray:
        """P-Net over the pyramid: (N, 9) [x1, y1, x2, y2, score, 4 offsets] after per-level and global NMS."""
        import cv2

        h, w = image.shape[:2]
        scale, found, level = 12.0 / min_size, [], image
        while min(h, w) * scale >= 12:
            # each level shrunk from the one before: area averaging over a few pixels, not over the whole frame
            level = cv2.resize(level, (math.ceil(w * scale), math.ceil(h * scale)), interpolation=cv2.INTER_AREA)
            prob, offsets = run_net(self.pnet, normalized(level[None]), 2)  # (1, h', w'), (1, 4, h', w')
            ys, xs = np.nonzero(prob[0] >= self.thresholds[0])  # stride 2, window 12
            if len(ys):
                boxes = np.stack([2 * xs, 2 * ys, 2 * xs + 12, 2 * ys + 12], 1) / scale
                level_found = np.concatenate([boxes, prob[0, ys, xs, None], offsets[0][:, ys, xs].T], 1)
                found.append(level_found[nms(level_found[:, :4], level_found[:, 4], 0.5)])
            scale *= self.factor
        if not found:
            return np.zeros((0, 9))
        found = np.concatenate(found)
        return found[nms(found[:, :4], found[:, 4], 0.7)]

    def _cascade(self, image: np.ndarray, min_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (N, 4) x1 y1 x2 y2, scores (N,), landmarks (N, 5, 2)) in the pixels of `image` (RGB)."""
        none = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        found = self._candidates(image, min_size)
        if not len(found):
            return none
        boxes = square(shift(found[:, :4], found[:, 5:]))
        prob, offsets = run_net(self.rnet, crops(image, boxes, 24), 2)
        keep = np.flatnonzero(prob > self.thresholds[1])
        keep = keep[nms(boxes[keep], prob[keep], 0.7)]
        if not len(keep):
            return none
        boxes = square(shift(boxes[keep], offsets[keep]))
        prob, offsets, points = run_net(self.onet, crops(image, boxes, 48), 3)
        keep = np.flatnonzero(prob > self.thresholds[2])
        boxes, prob, offsets, points = boxes[keep], prob[keep], offsets[keep], points[keep]
        side = (boxes[:, 2:4] - boxes[:, 0:2])[:, None, :]  # (N, 1, 2)
        marks = boxes[:, None, 0:2] + side * np.stack([points[:, :5], points[:, 5:]], 2)  # (N, 5, 2)
        boxes = shift(boxes, offsets)
        keep = nms(boxes, prob, 0.7, by_min=True)
        return boxes[keep], prob[keep], marks[keep]

    def detect(self, frame: np.ndarray) -> Detections:
        """Faces of a BGR (H, W, 3) (or gray) frame, left to right, with their five landmarks."""
        import cv2

        rgb = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB if frame.ndim == 2 else cv2.COLOR_BGR2RGB)
        scale = 1.0
        if self.max_side and max(rgb.shape[:2]) > self.max_side:
            scale = self.max_side / max(rgb.shape[:2])
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes, scores, marks = self._cascade(rgb, max(12.0, self.min_size * scale))
        boxes, marks = boxes / scale, marks / scale
        xywh = np.round(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)).reshape(-1, 4)
        return left_to_right(xywh, scores, marks.reshape(-1, 5, 2))
