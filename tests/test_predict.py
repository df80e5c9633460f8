"""`ferlab predict` on a real photograph (scikit-image's astronaut), a folder and a video made from it."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from ferlab.checkpoints.restore import restore
from ferlab.config.runner import CONF_DIR
from ferlab.errors import FerlabError
from ferlab.infer.detect import HaarFaceDetector, WholeImage
from ferlab.infer.predictor import softmax
from ferlab.infer.preprocess import InputSpec, to_model_input
from ferlab.tasks.predict import run_predict
from tests.conftest import compose_cfg, run_cli

# Eileen Collins' face in skimage.data.astronaut() (512x512), [x, y, w, h], marked by eye: hairline to chin
FACE = (178, 62, 95, 105)


def astronaut() -> np.ndarray:
    """The photo as OpenCV BGR uint8 (512, 512, 3); shipped inside scikit-image, nothing downloaded."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def write_clip(path: Path, frames: int = 6, size: tuple[int, int] = (320, 240)) -> list[tuple[float, int, int]]:
    """A video of the photo shrunk (0.45 -> 0.55) and moving right/down on gray; returns (scale, x, y) per frame."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    placed = []
    for i in range(frames):
        scale, x, y = 0.45 + 0.02 * i, 12 + 14 * i, 4 + 3 * i
        photo = cv2.resize(astronaut(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frame = np.full((h, w, 3), 90, np.uint8)
        ph, pw = min(photo.shape[0], h - y), min(photo.shape[1], w - x)
        frame[y : y + ph, x : x + pw] = photo[:ph, :pw]
        writer.write(frame)
        placed.append((scale, x, y))
    writer.release()
    return placed


def header_only_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height (8-bit gray) with one row of pixel data: 70 bytes on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))


def iou(a, b) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def predict_cfg(tmp: Path, *overrides: str):
    """A composed predict config whose run dir is fresh for every call."""
    return compose_cfg(tmp / uuid.uuid4().hex[:8], ["progress=false", *overrides], config_name="predict")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "astronaut.png"
    cv2.imwrite(str(path), astronaut())
    return path


def test_haar_finds_the_one_face_in_the_photo_at_any_size():
    detector = HaarFaceDetector()
    boxes = detector(astronaut())
    assert boxes.shape == (1, 4) and iou(boxes[0], FACE) > 0.5, boxes
    big = cv2.resize(astronaut(), (1024, 1024))  # longer than max_side: detected shrunk, boxes scaled back
    (box,) = HaarFaceDetector(max_side=512)(big)
    assert iou(box, [2 * v for v in FACE]) > 0.5, box
    assert len(detector(np.full((240, 320, 3), 128, np.uint8))) == 0  # a blank frame has no face
    whole = WholeImage()(np.zeros((30, 40, 3), np.uint8))
    assert whole.tolist() == [[0, 0, 40, 30]] and WholeImage.margin == 0


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF_DIR) / "detector").glob("*.yaml")))
def test_every_detector_option_composes_and_finds_the_face(option, tmp_path):
    detector = instantiate(predict_cfg(tmp_path, f"detector={option}").detector)
    boxes = detector(astronaut())  # face about 95 px: within every preset's range
    expected = [0, 0, 512, 512] if option == "none" else FACE
    assert len(boxes) == 1 and iou(boxes[0], expected) > 0.5 and 0 <= detector.margin < 1


def test_model_input_matches_the_training_normalization():
    spec = InputSpec.build(1, 48, [0.5], [0.25])
    gray = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    frame = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    x = to_model_input(frame, WholeImage()(frame), spec, margin=0.0)
    expected = (gray.astype(np.float32) / 255 - 0.5) / 0.25  # what FERDataModule.transform feeds the net
    assert x.shape == (1, 1, 48, 48) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], expected, atol=1e-5)
    blue = np.zeros((20, 20, 3), np.uint8)
    blue[..., 0] = 255  # BGR blue
    rgb = to_model_input(blue, np.array([[0, 0, 20, 20]]), InputSpec.build(3, 16, [0.0], [1.0], "auto"), 0.0)
    assert rgb.shape == (1, 3, 16, 16) and rgb[0, 2].min() == 1.0 and rgb[0, :2].max() == 0.0
    grey3 = to_model_input(blue, np.array([[0, 0, 20, 20]]), InputSpec.build(3, 16, [0.0], [1.0], "gray"), 0.0)
    assert np.allclose(grey3[0, 0], grey3[0, 2]) and abs(grey3[0, 0, 8, 8] - 0.114) < 0.01  # luminance of blue
    edge = np.zeros((40, 40, 3), np.uint8)
    edge[:, :20] = 200  # the box touches the left border: the margin repeats the border, not black
    crop = to_model_input(edge, np.array([[0, 10, 20, 20]]), InputSpec.build(1, 40, [0.0], [1.0]), 0.5)
    assert crop[0, 0, :, :10].min() > 0.7
    with pytest.raises(FerlabError, match="color=rgb needs a 3-channel model"):
        InputSpec.build(1, 48, [0.5], [0.25], "rgb")


def test_predict_photo_writes_csv_json_and_annotated_image(ckpt, photo, tmp_path):
    result = run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={photo}", "progress=true"))
    out = Path(result["output_dir"])
    rows = read_rows(out / "predictions.csv")
    assert result["summary"]["faces"] == 1 and len(rows) == 1
    row = rows[0]
    box = [int(row[k]) for k in "xywh"]
    assert row["file"] == str(photo) and row["frame"] == "0" and iou(box, FACE) > 0.5
    r = restore(ckpt)
    probs = np.array([float(row[f"p_{c}"]) for c in r.class_names])
    assert abs(probs.sum() - 1) < 1e-4 and row["label"] == r.class_names[probs.argmax()]
    with torch.no_grad():  # the same face through the checkpoint by hand
        x = to_model_input(astronaut(), np.array([box]), InputSpec.build(1, 48, r.mean, r.std), margin=0.1)
        expected = softmax(r.net(torch.from_numpy(x)).double().numpy())[0]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    doc = json.loads((out / "predictions.json").read_text())
    face = doc["predictions"][0]["faces"][0]
    assert face["box"] == box and face["label"] == row["label"] and set(face["probs"]) == set(r.class_names)
    assert doc["model"]["input"]["image_size"] == 48 and doc["summary"]["no_face"] == []
    drawn = cv2.imread(str(out / "annotated" / "astronaut.png"))
    assert drawn.shape == (512, 512, 3)
    assert np.abs(drawn[box[1] - 2 : box[1] + 3, box[0] : box[0] + box[2]].astype(int) - astronaut()[
        box[1] - 2 : box[1] + 3, box[0] : box[0] + box[2]]).mean() > 20  # the box's top edge is drawn
    assert np.array_equal(drawn[400:, :100], astronaut()[400:, :100])  # far from the face: untouched


def test_all_faces_of_a_frame_are_classified_in_one_batch_left_to_right(ckpt):
    from ferlab.infer.backends import load_model
    from ferlab.infer.predictor import Predictor

    model = load_model(str(ckpt))
    batches, run = [], model.run
    model.run = lambda x: batches.append(x.shape) or run(x)
    two = np.concatenate([astronaut(), astronaut()], axis=1)  # (512, 1024, 3): the same face twice
    faces = Predictor(model, HaarFaceDetector())(two)
    assert batches == [(2, 1, 48, 48)] and len(faces) == 2
    assert iou(faces[0].box, FACE) > 0.5 and iou(faces[1].box, (FACE[0] + 512, *FACE[1:])) > 0.5
    predictor = Predictor(model, HaarFaceDetector())
    for face in faces:  # batching changes nothing: each face alone gives the same probabilities
        (alone,) = predictor.classify(two, np.array([face.box]))
        np.testing.assert_allclose(alone.probs, face.probs, atol=1e-5)


def test_folder_skips_unreadable_reports_faceless_ignores_other_files(ckpt, photo, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "astronaut.jpg"), astronaut())
    cv2.imwrite(str(folder / "sub" / "again.png"), astronaut())
    cv2.imwrite(str(folder / "blank.png"), np.full((100, 100, 3), 128, np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    result = run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={folder}", "recursive=true"))
    s = result["summary"]
    assert s["files"] == 3 and s["faces"] == 2
    assert s["no_face"] == [str(folder / "blank.png")]
    assert [k["file"] for k in s["skipped"]] == [str(folder / "broken.jpg")] and "cannot decode" in s["skipped"][0]["reason"]
    assert s["ignored"] == [str(folder / "notes.txt")]
    out = Path(result["output_dir"])
    assert (out / "annotated" / "sub" / "again.png").is_file() and (out / "annotated" / "astronaut.jpg").is_file()
    flat = run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={folder}", "annotate=false"))
    assert flat["summary"]["files"] == 2 and not (Path(flat["output_dir"]) / "annotated").exists()


def test_an_image_over_the_pixel_limit_is_skipped_unread_with_its_reason(ckpt, photo, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    huge = folder / "huge.png"
    header_only_png(huge, 20_000, 20_000)  # decoding it would take 1.2 GB (and fail: its data is one row)
    cv2.imwrite(str(folder / "astronaut.png"), astronaut())
    result = run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={folder}", "annotate=false"))
    (skipped,) = result["summary"]["skipped"]
    assert skipped["file"] == str(huge) and result["summary"]["faces"] == 1
    assert "20000x20000 = 400,000,000 pixels is above max_pixels=120,000,000" in skipped["reason"]
    assert json.loads(Path(result["files"][1]).read_text())["summary"]["skipped"] == [skipped]
    alone = run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={photo}", "max_pixels=200000"))
    assert alone["summary"]["faces"] == 0 and alone["summary"]["files"] == 0  # a single input: skipped the same way
    assert "512x512 = 262,144 pixels is above max_pixels=200,000" in alone["summary"]["skipped"][0]["reason"]
    with pytest.raises(FerlabError, match="max_pixels must be null or a positive number of pixels, got -1"):
        run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={photo}", "max_pixels=-1"))


def test_video_rows_follow_the_moving_face_and_annotated_video_has_every_frame(ckpt, tmp_path):
    clip = tmp_path / "clip.mp4"
    placed = write_clip(clip)
    result = run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={clip}"))
    rows = read_rows(Path(result["output_dir"]) / "predictions.csv")
    assert [int(r["frame"]) for r in rows] == list(range(len(placed)))  # one face in every frame
    for r, (scale, x, y) in zip(rows, placed, strict=True):
        expected = [x + scale * FACE[0], y + scale * FACE[1], scale * FACE[2], scale * FACE[3]]
        assert iou([int(r[k]) for k in "xywh"], expected) > 0.4, (r, expected)
    cap = cv2.VideoCapture(str(Path(result["output_dir"]) / "annotated" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(placed) and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 320
    strided = run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={clip}", "frame_stride=2",
                                      "max_frames=5", "annotate=false"))
    assert [e["frame"] for e in json.loads(Path(strided["files"][1]).read_text())["predictions"]] == [0, 2, 4]


def test_existing_results_are_kept_unless_overwrite(ckpt, photo, tmp_path):
    out = tmp_path / "results"
    run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={photo}", f"output_dir={out}"))
    (out / "predictions.csv").write_text("mine\n")
    with pytest.raises(FerlabError, match="predictions.csv exists; pass overwrite=true"):
        run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={photo}", f"output_dir={out}"))
    assert (out / "predictions.csv").read_text() == "mine\n"
    run_predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={photo}", f"output_dir={out}", "overwrite=true"))
    assert (out / "predictions.csv").read_text().startswith("file,frame,face,x,y,w,h,label,prob,p_angry")


def test_bad_inputs_are_one_line_errors_naming_the_file(ckpt, ferlab_cli, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"\x00" * 100)
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    state["hyper_parameters"]["config"]["model"]["width"] = 16  # the stored config no longer fits the weights
    misfit = tmp_path / "misfit.ckpt"
    torch.save(state, misfit)
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), astronaut())
    cases = [
        (f"input={broken}", f"ckpt_path={ckpt}", f"cannot decode image {broken}"),
        (f"input={notes}", f"ckpt_path={ckpt}", f"unsupported file type '.txt': {notes}"),
        (f"input={bad_video}", f"ckpt_path={ckpt}", f"cannot open video {bad_video}"),
        (f"input={good}", f"ckpt_path={misfit}", f"{misfit}: weights do not fit the rebuilt model"),
    ]
    started = [ferlab_cli("predict", c[1], c[0], "progress=false", cwd=tmp_path) for c in cases]  # side by side
    runs = [p.result(300) for p in started]
    for (_, _, message), r in zip(cases, runs, strict=True):
        err = r.stderr.strip()
        assert r.returncode == 1 and err.count("\n") == 0 and err.startswith("ferlab: error:"), err[-2000:]
        assert message in err and "Traceback" not in err, err


def test_task_modules_stay_light_and_help_answers(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, ferlab.tasks.predict, ferlab.tasks.demo, ferlab.tasks.export\n"
        "print('HEAVY', [m for m in ('torch', 'cv2', 'onnxruntime') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr[-2000:]
    r = run_cli("predict", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "== ferlab predict ==" in r.stdout and "detector: auto, auto_fast, haar, haar_fast, mtcnn, mtcnn_fast, none" in r.stdout


def test_a_synthetic_trained_model_says_what_it_can_do(ckpt, photo, tmp_path, capsys):
    """One note on stderr when the checkpoint was trained on data=synthetic, none for a real dataset."""
    run_predict(predict_cfg(tmp_path / "a", f"ckpt_path={ckpt}", f"input={photo}", "progress=false"))
    err = capsys.readouterr().err
    assert err.count("trained on ferlab's synthetic faces") == 1 and "data=fer2013" in err
    real = torch.load(ckpt, weights_only=True, map_location="cpu")
    real["hyper_parameters"]["config"]["data"]["name"] = "fer2013"
    torch.save(real, tmp_path / "real.ckpt")
    run_predict(predict_cfg(tmp_path / "b", f"ckpt_path={tmp_path / 'real.ckpt'}", f"input={photo}", "progress=false"))
    assert "synthetic" not in capsys.readouterr().err
