"""Face detection with five landmarks (MTCNN, shipped as ONNX), the common `Detections` result, and the preprocessing
record that travels with a checkpoint (`detector=auto`, override lines, ONNX metadata)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ferlab.errors import FerlabError
from ferlab.infer.detect import Detections, HaarFaceDetector, WholeImage, detect_faces
from ferlab.infer.mtcnn import WEIGHTS, MTCNNDetector, load_net, run_net
from ferlab.infer.preprocessing import (
    KEY,
    FromCheckpoint,
    check_record,
    choose_detector,
    describe,
    face_record,
    make_record,
)
from tests.conftest import compose_cfg
from tests.test_predict import FACE, astronaut, iou


@pytest.fixture(scope="module")
def mtcnn() -> MTCNNDetector:
    return MTCNNDetector()


def test_mtcnn_finds_the_face_with_its_five_landmarks_in_order(mtcnn):
    found = mtcnn.detect(astronaut())
    assert isinstance(found, Detections) and len(found) == 1 and iou(found.boxes[0], FACE) > 0.5
    assert found.boxes.dtype == np.int64 and found.scores.dtype == np.float32 and found.scores[0] > 0.9
    (left_eye, right_eye, nose, mouth_left, mouth_right) = found.landmarks[0]  # image coordinates, template order
    x, y, w, h = FACE
    assert all(x <= p[0] <= x + w and y <= p[1] <= y + h for p in found.landmarks[0])
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert np.array_equal(mtcnn(astronaut()), found.boxes)  # the old call still gives boxes
    gray = cv2.cvtColor(astronaut(), cv2.COLOR_BGR2GRAY)
    assert iou(mtcnn(gray)[0], FACE) > 0.5
    assert len(mtcnn.detect(np.full((240, 320, 3), 128, np.uint8))) == 0


def test_every_detector_answers_with_detections():
    frame = astronaut()
    haar = HaarFaceDetector().detect(frame)
    assert haar.landmarks is None and haar.scores.tolist() == [1.0] and iou(haar.boxes[0], FACE) > 0.5
    whole = WholeImage().detect(frame)
    assert whole.boxes.tolist() == [[0, 0, 512, 512]] and whole.landmarks is None
    own = detect_faces(lambda f: np.array([[1, 2, 3, 4]]), frame)  # a detector of the user's own: boxes only
    assert own.boxes.tolist() == [[1, 2, 3, 4]] and own.landmarks is None
    with pytest.raises(FerlabError, match="align=true needs landmarks.*haar"):
        HaarFaceDetector(align=True)


def test_shipped_networks_match_their_notice_and_a_bad_file_is_one_line(tmp_path):
    notice = (WEIGHTS / "NOTICE").read_text()
    for name in ("pnet", "rnet", "onet"):
        digest = hashlib.sha256((WEIGHTS / f"mtcnn_{name}.onnx").read_bytes()).hexdigest()
        assert re.search(rf"mtcnn_{name}\.onnx\s+sha256 {digest}", notice), name
    assert "MIT License" in notice and "facenet-pytorch 2.6.0" in notice
    (tmp_path / "mtcnn_rnet.onnx").write_bytes(b"not a network")
    with pytest.raises(FerlabError, match=r"mtcnn_rnet\.onnx cannot be loaded"):
        load_net("rnet", tmp_path)


def test_conversion_keeps_the_released_weights(tmp_path):
    """mtcnn_convert: a state dict with the released layout -> ONNX that OpenCV runs as PyTorch does."""
    from ferlab.infer.mtcnn_convert import build, export, load

    torch.manual_seed(0)
    for name, shape in (("onet", (3, 3, 48, 48)),):  # the dense layers' transposed flatten; P-Net runs in every test
        torch.save(build(name).state_dict(), tmp_path / f"{name}.pt")
        net = load(name, tmp_path / f"{name}.pt")
        export(net, name, tmp_path / f"mtcnn_{name}.onnx")
        x = torch.randn(*shape)
        got = run_net(load_net(name, tmp_path), x.numpy(), len(net.heads))
        with torch.inference_mode():
            want = net(x)
        np.testing.assert_allclose(got[0], want[0][:, 1].numpy(), atol=1e-4)
        for g, w in zip(got[1:], want[1:], strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4)
    (tmp_path / "rnet.pt").write_bytes(b"junk")
    with pytest.raises(FerlabError, match=r"rnet\.pt cannot be loaded"):
        load("rnet", tmp_path / "rnet.pt")


def test_records_are_checked_data():
    face = face_record("mtcnn", settings={"min_size": 40}, align=True, align_margin=0.2)
    record = make_record(image_size=48, in_chans=1, mean=[0.5], std=[0.25], color="gray", face=face)
    assert check_record(json.loads(json.dumps(record)), "x") == record
    bad = [{**record, "face": {**face, "detector": "evil"}}, {**record, "face": {**face, "_target_": "os.system"}},
           {**record, "image_size": "48"}, {**record, "face": {**face, "align": "yes"}}]
    for value in bad:
        with pytest.raises(FerlabError, match="refused"):
            check_record(value, "ckpt")


def test_auto_rebuilds_the_recorded_detector_and_explicit_ones_say_what_differs():
    aligned = make_record(image_size=48, in_chans=1, mean=[0.5], std=[0.25],
                          face=face_record("mtcnn", settings={"min_size": 30}, align=True, align_margin=0.2))
    auto = FromCheckpoint(HaarFaceDetector())
    chosen, lines = choose_detector(auto, aligned, "ckpt")
    assert isinstance(chosen, MTCNNDetector) and chosen.align and chosen.align_margin == 0.2 and not lines
    assert chosen.min_size == 30
    fallback, lines = choose_detector(auto, None, "ckpt")  # nothing recorded: today's behaviour
    assert isinstance(fallback, HaarFaceDetector) and not lines
    haar, lines = choose_detector(HaarFaceDetector(), aligned, "ckpt")
    assert isinstance(haar, HaarFaceDetector) and lines[0] == (
        "detector overridden: checkpoint used mtcnn+align (arcface, margin 0.2), this run uses haar (margin 0.1)")
    assert lines[1].startswith("warning: this model was trained on aligned faces")
    same, lines = choose_detector(chosen, aligned, "ckpt")
    assert same is chosen and not lines
    assert describe(chosen)["settings"]["min_size"] == 30


def _with_record(ckpt: Path, tmp: Path, face: dict) -> Path:
    """A copy of a checkpoint whose preprocessing record names `face`."""
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    data[KEY] = {**data[KEY], "face": face}
    path = tmp / "aligned.ckpt"
    torch.save(data, path)
    return path


def test_predict_and_onnx_apply_the_checkpoint_record(ckpt, tmp_path, capsys):
    from ferlab.tasks.export import run_export
    from ferlab.tasks.predict import run_predict

    assert torch.load(ckpt, map_location="cpu", weights_only=True)[KEY]["face"] is None  # synthetic: unrecorded
    path = _with_record(ckpt, tmp_path, face_record("mtcnn", align=True, align_margin=0.1, source="test"))
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), astronaut())

    def predict(*overrides: str) -> dict:
        cfg = compose_cfg(tmp_path / uuid.uuid4().hex[:8], ["progress=false", "annotate=false", f"input={photo}",
                                                            f"ckpt_path={path}", *overrides], config_name="predict")
        out = run_predict(cfg)
        return json.loads(Path(out["files"][1]).read_text())

    used = predict()["model"]["detector"]["used"]
    assert used["detector"] == "mtcnn" and used["align"] and "overridden" not in capsys.readouterr().err
    doc = predict("detector=haar")
    assert doc["model"]["detector"]["used"]["detector"] == "haar"
    assert "detector overridden: checkpoint used mtcnn+align" in capsys.readouterr().err
    export_cfg = compose_cfg(tmp_path / "export", [f"ckpt_path={path}", "format=onnx"], config_name="export")
    run_export(export_cfg)
    onnx = predict("backend=onnx")
    assert onnx["model"]["detector"]["used"]["align"] and len(onnx["predictions"][0]["faces"]) == 1
    assert len(onnx["predictions"][0]["faces"][0]["landmarks"]) == 5
