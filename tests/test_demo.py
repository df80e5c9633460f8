"""`ferlab demo`: no camera is a clear error; a video file runs headless into an annotated video with FPS."""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.errors import FerlabError
from ferlab.infer.backends import load_model
from ferlab.infer.detect import HaarFaceDetector
from ferlab.infer.draw import annotate
from ferlab.infer.media import VideoSource
from ferlab.infer.predictor import Predictor
from ferlab.infer.video import run_loop
from ferlab.tasks.demo import run_demo
from tests.conftest import compose_cfg, run_cli
from tests.test_predict import write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_clip(path)
    return path


def demo_cfg(tmp: Path, *overrides: str):
    # the clip's faces are 45-55 px: below haar_fast's 64 px floor (meant for webcam close-ups)
    return compose_cfg(tmp / uuid.uuid4().hex[:8], ["detector=haar", *overrides], config_name="demo")


class Frames:
    """A writer that keeps the frames (exact pixels, no video codec in between)."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(frame)


def test_no_camera_is_a_clear_one_line_error(ckpt, tmp_path):
    r = run_cli("demo", f"ckpt_path={ckpt}", "source=0", "display=false", cwd=tmp_path)
    err = r.stderr.strip()
    assert r.returncode == 1 and err.count("\n") == 0, err[-2000:]
    assert err.startswith("ferlab: error: cannot open camera 0: no camera found"), err


def test_headless_video_source_writes_every_annotated_frame(ckpt, clip, tmp_path, capsys):
    result = run_demo(demo_cfg(tmp_path, f"ckpt_path={ckpt}", f"source={clip}", "display=false"))
    assert result["frames"] == 6 and result["faces"] == 6 and result["fps"] > 0
    out = Path(result["video"])
    assert out.name == "demo.mp4" and out.parent == tmp_path / out.parent.parent.name / "run"
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 320
    assert "6 frames, 6 faces" in capsys.readouterr().out
    with pytest.raises(FerlabError, match="exists; pass overwrite=true"):
        run_demo(demo_cfg(tmp_path, f"ckpt_path={ckpt}", f"source={clip}", "display=false", f"out_path={out}"))
    again = run_demo(demo_cfg(tmp_path, f"ckpt_path={ckpt}", f"source={clip}", "display=false", f"out_path={out}",
                              "overwrite=true", "max_frames=3", "backend=torch"))
    assert again["frames"] == 3 and int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_each_frame_carries_labels_and_fps(ckpt, clip):
    predictor = Predictor(load_model(str(ckpt), threads=1), HaarFaceDetector(max_side=320, scale_factor=1.2))
    sink = Frames()
    stats = run_loop(VideoSource(clip), predictor, window=None, writer=sink)
    raw = list(VideoSource(clip))
    assert stats.frames == len(sink.frames) == len(raw) == 6 and stats.faces == 6
    for shown, frame in zip(sink.frames, raw, strict=True):
        faces = predictor(frame)
        plain = annotate(frame, faces, predictor.class_names)  # the same drawing without the FPS counter
        x, y, w, h = faces[0].box
        assert np.abs(plain[y : y + h, x].astype(int) - frame[y : y + h, x]).mean() > 20  # box edge drawn
        changed = np.argwhere((shown != plain).any(axis=2))
        assert len(changed) > 50 and changed[:, 0].max() < 40 and changed[:, 1].max() < 140  # only the FPS corner


def test_bad_sources_and_no_screen_are_clear_errors(ckpt, tmp_path, monkeypatch):
    with pytest.raises(FerlabError, match=f"video not found: {tmp_path / 'nope.mp4'}"):
        run_demo(demo_cfg(tmp_path, f"ckpt_path={ckpt}", f"source={tmp_path / 'nope.mp4'}", "display=false"))
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"RIFF0000AVI garbage")
    with pytest.raises(FerlabError, match=f"cannot open video {junk}"):
        run_demo(demo_cfg(tmp_path, f"ckpt_path={ckpt}", f"source={junk}", "display=false"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=2)
    with pytest.raises(FerlabError, match="display=true needs a screen"):
        run_demo(demo_cfg(tmp_path, f"ckpt_path={ckpt}", f"source={clip}"))
