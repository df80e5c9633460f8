"""Reading the user's images and videos, finding them in folders, writing annotated media atomically.

User files are only read (bytes through `np.fromfile`, videos through `cv2.VideoCapture`); what ferlab
writes goes to a temporary file renamed into place, so a killed run never leaves half a video.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.errors import FerlabError
from ferlab.runs.io import atomic_path

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
# container -> FourCC OpenCV's bundled FFmpeg can write into it
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


def cv2_quiet() -> Any:
    """Import cv2 with its own and FFmpeg's console chatter off: failures become our one-line errors."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def kind_of(path: Path) -> str | None:
    """"image", "video" or None (not a supported media file), from the extension."""
    ext = path.suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def media_kind(path: Path) -> str:
    """"image" or "video"; any other file type is a `FerlabError` naming the file."""
    kind = kind_of(path)
    if kind is None:
        raise FerlabError(
            f"unsupported file type {path.suffix or '(no extension)'!r}: {path} "
            "(images: .jpg .png .bmp .tif .webp ...; videos: .mp4 .avi .mov .mkv ...)"
        )
    return kind


def over_pixel_limit(path: Path, max_pixels: int | None) -> str | None:
    """Why `path` is not decoded when its header says width x height is above `max_pixels` (None: it is not)."""
    from ferlab.data.images import header_size

    size = header_size(path) if max_pixels else None
    if size is None or size[0] * size[1] <= max_pixels:
        return None  # within the limit, or not an image Pillow knows (OpenCV's decoder says what is wrong)
    w, h = size
    return (f"image {path} not decoded: {w}x{h} = {w * h:,} pixels is above max_pixels={max_pixels:,} "
            "(a larger max_pixels=... reads it)")


def read_image(path: Path) -> np.ndarray:
    """A BGR uint8 (H, W, 3) image; an unreadable or undecodable file is a `FerlabError` naming it."""
    cv2 = cv2_quiet()
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise FerlabError(f"cannot read image {path}: {e.strerror or e}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FerlabError(f"cannot decode image {path}: not a valid {path.suffix.lstrip('.') or 'image'} file")
    return image


def list_media(folder: Path, recursive: bool, exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(supported media files, other files) under `folder`, sorted; `exclude` (our output dir) is left out."""
    pattern = "**/*" if recursive else "*"
    media, other = [], []
    excluded = exclude.resolve() if exclude is not None else None
    for path in sorted(folder.glob(pattern)):
        if not path.is_file() or path.name.startswith("."):
            continue
        if excluded is not None and excluded in path.resolve().parents:
            continue
        (media if kind_of(path) else other).append(path)
    return media, other


class VideoSource:
    """Frames from a camera index or a video file: `for frame in VideoSource(...)` yields BGR frames.

    Opening fails with a clear `FerlabError` (no camera, missing file, not a video); so does a file that
    opens but yields no frame at all. The capture is released when iteration ends.
    """

    def __init__(self, source: int | str | Path, max_frames: int | None = None) -> None:
        cv2 = cv2_quiet()
        self.name = f"camera {source}" if isinstance(source, int) else str(source)
        self.max_frames = max_frames
        if isinstance(source, int):
            self.cap = cv2.VideoCapture(source)
            if not self.cap.isOpened():
                raise FerlabError(
                    f"cannot open camera {source}: no camera found or it is in use "
                    "(pass a video file as source=path/to/video.mp4)"
                )
            return
        stream = "://" in str(source) or (Path(source).exists() and not Path(source).is_file())  # URL, /dev/video0
        if not stream and not Path(source).is_file():
            raise FerlabError(f"video not found: {source}")
        self.cap = cv2.VideoCapture(str(source))
        if not self.cap.isOpened():
            what = "stream" if stream else "video file (or its codec is not supported)"
            raise FerlabError(f"cannot open video {source}: not a readable {what}")

    @property
    def fps(self) -> float:
        """The stream's frame rate, or 30 when it does not say (cameras, some containers)."""
        import cv2

        fps = self.cap.get(cv2.CAP_PROP_FPS)
        return float(fps) if fps and 1 <= fps <= 240 else 30.0

    @property
    def frame_count(self) -> int | None:
        """Frames in a file as its container states them (None for cameras or when unknown)."""
        import cv2

        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        n = n if n > 0 else None
        return min(n, self.max_frames) if n and self.max_frames else n

    def close(self) -> None:
        """Release the capture (iteration does this itself when it ends)."""
        self.cap.release()

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            count = 0
            while self.max_frames is None or count < self.max_frames:
                ok, frame = self.cap.read()
                if not ok:
                    break
                count += 1
                yield frame
            if count == 0 and self.max_frames != 0:
                raise FerlabError(f"cannot read video {self.name}: no frame could be decoded")
        finally:
            self.cap.release()


class AtomicVideoWriter:
    """`cv2.VideoWriter` into a temporary file beside `path`, renamed into place on a clean exit only.

    The size is taken from the first frame; use as a context manager.
    """

    def __init__(self, path: Path, fps: float) -> None:
        ext = path.suffix.lower()
        if ext not in FOURCC:
            raise FerlabError(f"cannot write video {path}: use one of {', '.join(sorted(FOURCC))}")
        self.path, self.fps, self.fourcc = path, fps, FOURCC[ext]
        self.writer: Any = None
        self.frames = 0
        self._atomic = atomic_path(path)  # a temporary file with the same extension (it picks the container)

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR frame (all frames must have the first one's size)."""
        if self.writer is None:
            cv2 = cv2_quiet()
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self.writer.isOpened():
                raise FerlabError(f"cannot write video {self.path}: OpenCV has no {self.fourcc} encoder")
        self.writer.write(frame)
        self.frames += 1

    def __enter__(self) -> AtomicVideoWriter:
        self.tmp = self._atomic.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.writer is not None:
            self.writer.release()
        if exc_type is None and not self.frames:  # no frame: no video; abort the write like an error would
            exc_type, exc = _NoFrames, _NoFrames()
        self._atomic.__exit__(exc_type, exc, tb)  # renames on success, removes the temporary file otherwise


class _NoFrames(Exception):
    """Aborts an AtomicVideoWriter that received no frame (never escapes it)."""
