"""The per-image work of `ferlab align`: read a photo, find its faces' five landmarks (given, or from the detector),
warp each onto the template, write the crops atomically. Runs in worker processes, one detector per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.errors import FerlabError

KEEP_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # other image types are written as PNG
FACES = ("largest", "all")
_STATE: dict[str, Any] = {}  # this worker's detector and settings (set by `init_worker`)


@dataclass
class Item:
    """One photo to align. out: the output path relative to the output folder (its stem and suffix name the crop);
    landmarks: the dataset's own (5, 2) points for one face, or None to detect; where: the landmark file, for errors."""

    src: Path
    out: Path
    landmarks: np.ndarray | None = None
    where: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """What every worker needs: the output folder, crop side, template margin, which faces, and the detector config
    (the user's, instantiated in each worker; None when every item brings its landmarks)."""

    out_dir: Path
    size: int
    align_margin: float
    faces: str
    detector: dict[str, Any] | None
    quality: int = 95


def init_worker(settings: Settings) -> None:
    """Per process: one OpenCV thread (the processes are the parallelism) and its own detector."""
    import cv2

    cv2.setNumThreads(1)
    _STATE["settings"] = settings
    if settings.detector is not None:
        from hydra.utils import instantiate

        _STATE["detector"] = instantiate(settings.detector)


def check_landmarks(points: np.ndarray, shape: tuple[int, ...], where: str) -> None:
    """Five landmarks must fit their image: none further off it than half its side (a face running off the photo's
    edge is fine); else one line naming the landmark file."""
    h, w = shape[:2]
    slack = 0.5 * max(h, w)
    outside = (points[:, 0] < -slack) | (points[:, 0] > w + slack) | (points[:, 1] < -slack) | (points[:, 1] > h + slack)
    if outside.any():
        raise FerlabError(f"{where}: landmarks {np.round(points[outside], 1).tolist()} lie outside their "
                          f"{w}x{h} image; the landmark file does not match the image")


def output_paths(item: Item, count: int, faces: str) -> list[Path]:
    """Crop file names: the photo's own name for the largest face, <stem>_<k> for every face with faces=all."""
    suffix = item.out.suffix.lower() if item.out.suffix.lower() in KEEP_SUFFIXES else ".png"
    if faces == "largest":
        return [item.out.with_suffix(suffix)]
    return [item.out.with_name(f"{item.out.stem}_{k}{suffix}") for k in range(count)]


def _write(path: Path, image: np.ndarray, quality: int) -> None:
    import cv2

    from ferlab.runs.io import atomic_write

    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(path.suffix.lower(), image, params)
    if not ok:
        raise FerlabError(f"cannot encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(data.tobytes()))


def _faces(item: Item, image: np.ndarray, faces: str) -> tuple[np.ndarray, int]:
    """(landmarks (N, 5, 2) of the faces to write, faces found)."""
    from ferlab.infer.detect import detect_faces

    if item.landmarks is not None:
        check_landmarks(item.landmarks, image.shape, item.where)
        return item.landmarks[None], 1
    found = detect_faces(_STATE["detector"], image)
    if len(found) and found.landmarks is None:
        raise FerlabError("ferlab align needs a detector with landmarks (detector=mtcnn)")
    chosen = found.largest() if faces == "largest" else found
    return (chosen.landmarks if len(chosen) else np.zeros((0, 5, 2))), len(found)


def align_item(item: Item) -> dict[str, Any]:
    """Align one photo; returns its journal entry: file, status (ok | no_face | unreadable), faces found, the crops
    written (relative paths) and why a file was unreadable. A landmark file that does not fit raises."""
    from ferlab.infer.align import align_face
    from ferlab.infer.media import read_image

    s: Settings = _STATE["settings"]
    entry: dict[str, Any] = {"file": str(item.src), "out": str(item.out), **item.meta}
    try:
        image = read_image(item.src)
    except FerlabError as e:
        return {**entry, "status": "unreadable", "faces": 0, "written": [], "reason": str(e)}
    marks, found = _faces(item, image, s.faces)
    paths = output_paths(item, len(marks), s.faces)[: len(marks)]
    for points, rel in zip(marks, paths, strict=True):
        _write(s.out_dir / rel, align_face(image, points, s.size, s.align_margin), s.quality)
    return {**entry, "status": "ok" if len(marks) else "no_face", "faces": found, "written": [str(p) for p in paths]}
