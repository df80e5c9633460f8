"""The real-time loop of `ferlab demo` (report 003's system): read, detect, classify, draw with FPS, show/write."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferlab.errors import FerlabError
from ferlab.infer.draw import annotate
from ferlab.infer.predictor import Predictor

QUIT_KEYS = {ord("q"), ord("Q"), 27}  # q or Esc closes the window


@dataclass
class LoopStats:
    """What a demo run did: frames shown, faces found, wall time and frame rate over the whole run."""

    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    stopped_by_user: bool = False

    @property
    def fps(self) -> float:
        """Frames per second over the run (reading, detection, classification, drawing, output)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class FpsMeter:
    """Frames per second between successive frames, smoothed (exponential moving average)."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing, self.value, self.last = smoothing, None, None

    def tick(self) -> float | None:
        """Call once per frame; returns the smoothed rate (None on the first frame)."""
        now = time.perf_counter()
        if self.last is not None and now > self.last:
            rate = 1.0 / (now - self.last)
            self.value = rate if self.value is None else self.smoothing * self.value + (1 - self.smoothing) * rate
        self.last = now
        return self.value


class Window:
    """An OpenCV window; a headless OpenCV build or no screen is a clear `FerlabError` up front."""

    def __init__(self, title: str) -> None:
        import cv2

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise FerlabError("display=true needs a screen, and no DISPLAY is set; use display=false to write a video")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise FerlabError(
                "this OpenCV build has no GUI (opencv-python-headless): install opencv-python to show a window, "
                "or use display=false to write the annotated video"
            ) from None
        self.title = title

    def show(self, frame: np.ndarray) -> bool:
        """Show a frame; False once the user pressed q/Esc or closed the window."""
        import cv2

        cv2.imshow(self.title, frame)
        key = cv2.waitKey(1) & 0xFF
        return key not in QUIT_KEYS and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        """Close the window."""
        import cv2

        cv2.destroyWindow(self.title)


def run_loop(frames: Iterable[np.ndarray], predictor: Predictor, window: Window | None, writer: Any,
             bars: bool = True) -> LoopStats:
    """Classify every frame, draw labels and FPS, show it and/or append it to `writer`."""
    stats, meter = LoopStats(), FpsMeter()
    start = time.perf_counter()
    for frame in frames:
        faces = predictor(frame)
        shown = annotate(frame, faces, predictor.class_names, fps=meter.tick() or 0.0, bars=bars)
        stats.frames += 1
        stats.faces += len(faces)
        if writer is not None:
            writer.write(shown)
        if window is not None and not window.show(shown):
            stats.stopped_by_user = True
            break
    stats.seconds = time.perf_counter() - start
    return stats
