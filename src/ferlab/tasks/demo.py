"""`ferlab demo`: report 003's real-time system on a webcam or a video, in a window or headless.

Every frame: Haar face detection, all faces classified as one batch, boxes, labels, probability bars and the
frame rate drawn. `display=false` writes the annotated video (default <run dir>/demo.mp4) instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ferlab.config.runner import hydra_task
from ferlab.errors import FerlabError

log = logging.getLogger("ferlab.tasks.demo")


def parse_source(source: Any) -> int | str:
    """A camera index (0, "1") or a file / URL string."""
    if isinstance(source, bool) or source is None:
        raise FerlabError(f"source: expected a camera index or a video file, got {source!r}")
    if isinstance(source, int) or str(source).strip().isdigit():
        return int(source)
    return str(source)


def demo_out_path(cfg: DictConfig) -> Path | None:
    """Where the annotated video goes (None: nowhere); an existing file needs `overwrite=true`."""
    if cfg.get("out_path"):
        out = Path(cfg.out_path)
    elif not cfg.display:
        out = Path(cfg.paths.output_dir) / "demo.mp4"
    else:
        return None
    if out.exists() and not cfg.overwrite:
        raise FerlabError(f"{out} exists; pass overwrite=true to replace it")
    return out


def run_demo(cfg: DictConfig) -> dict[str, Any]:
    """Open the source, run the loop until it ends (or q/Esc), print and return frames, faces and FPS."""
    import contextlib

    from ferlab.infer.media import AtomicVideoWriter, VideoSource
    from ferlab.infer.setup import build_predictor
    from ferlab.infer.video import Window, run_loop

    if cfg.max_frames is not None and int(cfg.max_frames) < 1:
        raise FerlabError("max_frames must be null or >= 1")
    out = demo_out_path(cfg)
    source = VideoSource(parse_source(cfg.source), cfg.max_frames)
    window = Window(str(cfg.window_title)) if cfg.display else None  # no screen: fail before loading the model
    predictor = build_predictor(cfg)
    writer = AtomicVideoWriter(out, source.fps) if out is not None else None
    try:
        with writer or contextlib.nullcontext():
            stats = run_loop(source, predictor, window, writer, bars=bool(cfg.bars))
    finally:
        if window is not None:
            window.close()
    t = predictor.timing
    result = {
        "source": source.name, "frames": stats.frames, "faces": stats.faces, "fps": stats.fps,
        "detect_ms": 1000 * t.detect / max(1, t.frames), "classify_ms": 1000 * t.classify / max(1, t.frames),
        "video": str(out) if out is not None else None,
    }
    print(f"{source.name}: {stats.frames} frames, {stats.faces} faces, {stats.fps:.1f} FPS overall "
          f"(detection {result['detect_ms']:.1f} ms, classification {result['classify_ms']:.1f} ms per frame)")
    if out is not None:
        print(f"annotated video: {out}")
    return result


main = hydra_task("demo")(run_demo)

if __name__ == "__main__":
    main()
