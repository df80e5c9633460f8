"""`ferlab predict`'s loops: one image, one video, or a whole folder, with annotated copies and a progress bar.

Annotated media go to <out_dir>/annotated/ under the input's name (a folder's layout is mirrored); videos
are written as .mp4 unless their container is one OpenCV writes (mp4, m4v, mov, mkv, avi).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferlab.errors import FerlabError
from ferlab.infer.draw import annotate
from ferlab.infer.media import (
    FOURCC,
    AtomicVideoWriter,
    VideoSource,
    kind_of,
    list_media,
    media_kind,
    over_pixel_limit,
    read_image,
)
from ferlab.infer.predictor import Predictor
from ferlab.infer.records import PredictionLog

log = logging.getLogger("ferlab.tasks.predict")


@dataclass
class Job:
    """One predict run: the predictor, where results go, and how media are handled.

    annotated_dir: None to skip annotated copies; frame_stride: classify every n-th video frame
    (the boxes in between are held); max_frames: per video (None: all); max_pixels: larger images are
    skipped (with the reason) before they are decoded.
    """

    predictor: Predictor
    records: PredictionLog
    annotated_dir: Path | None
    progress: Any
    frame_stride: int = 1
    max_frames: int | None = None
    bars: bool = True
    max_pixels: int | None = None


def _annotated_path(job: Job, rel: Path) -> Path | None:
    if job.annotated_dir is None:
        return None
    path = job.annotated_dir / rel
    if kind_of(path) == "image":  # colour drawings: keep the format unless it is a gray/bitmap-only one
        return path if path.suffix.lower() not in (".pgm", ".pbm") else path.with_suffix(".png")
    return path if path.suffix.lower() in FOURCC else path.with_suffix(".mp4")


def predict_image(job: Job, path: Path, rel: Path) -> None:
    """Classify every face of one image; a missing or undecodable file raises `FerlabError`, one above the pixel
    limit is skipped (recorded with the reason) without being decoded."""
    import cv2

    from ferlab.runs.io import atomic_write

    too_large = over_pixel_limit(path, job.max_pixels)
    if too_large:
        job.records.skip(str(path), too_large)
        log.warning("skipped: %s", too_large)
        return
    frame = read_image(path)
    faces = job.predictor(frame)
    job.records.add(str(path), 0, faces)
    job.records.finish_file(str(path), 1)
    out = _annotated_path(job, rel)
    if out is not None:
        ok, data = cv2.imencode(out.suffix.lower(), annotate(frame, faces, job.predictor.class_names, bars=job.bars))
        if not ok:
            raise FerlabError(f"cannot encode annotated image {out}")
        atomic_write(out, lambda tmp: tmp.write_bytes(data.tobytes()))


def predict_video(job: Job, path: Path, rel: Path) -> None:
    """Classify faces every `frame_stride` frames; write the annotated video (all frames)."""
    source = VideoSource(path, job.max_frames)
    fps, names = source.fps, job.predictor.class_names
    task = job.progress.add_task(f"{path.name}", total=source.frame_count)
    out = _annotated_path(job, rel)
    writer = AtomicVideoWriter(out, fps) if out is not None else None
    faces, classified = [], 0
    try:
        with writer or contextlib.nullcontext():
            for i, frame in enumerate(source):
                if i % job.frame_stride == 0:
                    faces = job.predictor(frame)
                    job.records.add(str(path), i, faces, time_s=i / fps)
                    classified += 1
                if writer is not None:
                    writer.write(annotate(frame, faces, names, bars=job.bars))
                job.progress.advance(task)
    finally:
        job.progress.remove_task(task)
    job.records.finish_file(str(path), classified)


RUNNERS = {"image": predict_image, "video": predict_video}


def predict_file(job: Job, path: Path, rel: Path) -> None:
    """One image or video; an unsupported file type is a `FerlabError` naming it."""
    RUNNERS[media_kind(path)](job, path, rel)


def predict_folder(job: Job, folder: Path, recursive: bool, exclude: Path | None) -> None:
    """Every image and video in a folder; unreadable ones are skipped, counted and logged."""
    media, other = list_media(folder, recursive, exclude)
    job.records.ignored = [str(p) for p in other]
    if not media:
        raise FerlabError(f"no images or videos in {folder}" + ("" if recursive else " (recursive=true looks in subfolders)"))
    task = job.progress.add_task(f"{folder.name or folder}", total=len(media))
    for path in media:
        try:
            predict_file(job, path, path.relative_to(folder))
        except FerlabError as e:
            job.records.skip(str(path), str(e))
            log.warning("skipped: %s", e)
        job.progress.advance(task)
