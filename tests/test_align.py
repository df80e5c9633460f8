"""Alignment onto the ArcFace template, and `ferlab align`: raw photos or dataset landmarks -> an aligned dataset that
`data=folder` reads and whose checkpoints record how their faces were cut."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ferlab.errors import FerlabError
from ferlab.infer.align import TEMPLATES, align_face, alignment_matrix, similarity, template
from ferlab.tasks.align import run_align
from tests.conftest import compose_cfg
from tests.test_predict import astronaut


def _similarity(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def test_landmarks_of_a_moved_face_map_back_onto_the_template():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    for size, margin in ((112, 0.0), (48, 0.1), (64, 0.3)):
        target = template(size, margin)
        moved = _similarity(rng.uniform(-1, 1), rng.uniform(0.5, 4), rng.uniform(0, 300, 2))
        marks = np.c_[target, np.ones(5)] @ np.linalg.inv(np.r_[moved, [[0, 0, 1]]]).T[:, :2]  # the face in a photo
        m = alignment_matrix(marks, size, margin)
        assert np.abs(np.c_[marks, np.ones(5)] @ m.T - target).max() < 1e-9
        assert np.abs(m - SimilarityTransform.from_estimate(marks, target).params[:2]).max() < 1e-9
    noisy = rng.uniform(0, 100, (5, 2))
    assert np.abs(similarity(noisy, template(48)) - SimilarityTransform.from_estimate(noisy, template(48)).params[:2]
                  ).max() < 1e-9
    np.testing.assert_allclose(template(112), TEMPLATES["arcface"])
    np.testing.assert_allclose(template(56), (TEMPLATES["arcface"] + 0.5) / 2 - 0.5)
    with pytest.raises(FerlabError, match="five finite"):
        alignment_matrix(np.zeros((4, 2)), 48)


def test_warped_pixels_land_on_the_template():
    """Dots drawn at the template points, the image turned and enlarged 3x: aligning brings each dot back."""
    canvas = np.zeros((112, 112), np.uint8)
    for x, y in TEMPLATES["arcface"]:
        cv2.circle(canvas, (round(x), round(y)), 2, 255, -1)
    moved = _similarity(0.4, 3.0, (60, 10))
    photo = cv2.warpAffine(canvas, moved, (500, 500))
    marks = np.c_[TEMPLATES["arcface"], np.ones(5)] @ moved.T
    out = align_face(photo, marks, 56)  # 6x shrink: warped at a multiple of the size, then area-averaged
    for x, y in template(56):
        patch = out[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3]
        assert patch.max() > 100 and np.unravel_index(patch.argmax(), patch.shape) in {(1, 1), (1, 2), (2, 1),
                                                                                     (2, 2), (2, 3), (3, 2), (3, 3)}


def _raw(root: Path) -> Path:
    """train/test x happy/sad of the astronaut photo turned and scaled, a blank photo, a broken file, a text file."""
    photo = astronaut()
    for split in ("train", "test"):
        for c, label in enumerate(("happy", "sad")):
            (root / split / label).mkdir(parents=True)
            for k in range(2):
                m = cv2.getRotationMatrix2D((256, 256), 20 * k - 10 + 5 * c, 0.6 + 0.2 * k)
                cv2.imwrite(str(root / split / label / f"p{k}.jpg"), cv2.warpAffine(photo, m, (512, 512)))
    cv2.imwrite(str(root / "train" / "happy" / "blank.png"), np.full((120, 160, 3), 90, np.uint8))
    (root / "train" / "sad" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "train" / "notes.txt").write_text("x")
    return root


def align_cfg(tmp: Path, *overrides: str):
    return compose_cfg(tmp / uuid.uuid4().hex[:8], ["progress=false", *overrides], config_name="align")


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("align")
    raw = _raw(tmp / "raw")
    before = sorted((p.relative_to(raw), p.stat().st_mtime_ns) for p in raw.rglob("*"))
    report = run_align(align_cfg(tmp, f"input={raw}", f"output={tmp / 'out'}", "size=64", "workers=2"))
    assert sorted((p.relative_to(raw), p.stat().st_mtime_ns) for p in raw.rglob("*")) == before  # input untouched
    return {"tmp": tmp, "raw": raw, "out": tmp / "out", "report": report}


def test_align_writes_the_layout_and_reports_what_it_could_not_align(aligned):
    out, report, raw = aligned["out"], aligned["report"], aligned["raw"]
    assert report["counts"] == {"photos": 10, "aligned": 8, "crops": 8, "no_face": 1, "several_faces": 0,
                                "unreadable": 1, "ignored": 1, "skipped_as_done": 0}
    assert report["no_face"] == [str(raw / "train" / "happy" / "blank.png")]
    assert report["unreadable"][0]["file"] == str(raw / "train" / "sad" / "broken.jpg")
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert crops == [f"{s}/{c}/p{k}.jpg" for s in ("test", "train") for c in ("happy", "sad") for k in (0, 1)]
    assert cv2.imread(str(out / "train" / "happy" / "p0.jpg")).shape == (64, 64, 3)
    manifest = json.loads((out / "align.json").read_text())
    assert manifest["complete"] and manifest["face"]["detector"] == "mtcnn" and manifest["face"]["align"]
    assert "blank.png" in (out / "align_report.md").read_text()
    # the two turned copies of one face align onto nearly the same crop
    a, b = (cv2.imread(str(out / "train" / "happy" / f"p{k}.jpg"), cv2.IMREAD_GRAYSCALE).astype(float) for k in (0, 1))
    assert np.abs(a - b).mean() < 25


def test_an_aligned_folder_trains_and_its_checkpoint_records_the_alignment(aligned):
    from ferlab.tasks.train import run_train

    cfg = compose_cfg(aligned["tmp"] / "train", [
        "data=folder", f"data.source.root={aligned['out']}", "data.class_names=[happy,sad]", "data.batch_size=4",
        "data.decode_workers=1", "model.width=8", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
        "logger=none", "test=false", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"])
    metrics = run_train(cfg)
    record = torch.load(metrics["checkpoints"]["last"], map_location="cpu", weights_only=True)["ferlab_preprocessing"]
    manifest = json.loads((aligned["out"] / "align.json").read_text())
    assert record["face"] == manifest["face"] and record["image_size"] == 48 and record["color"] == "gray"


def test_align_refuses_to_write_into_its_input_or_onto_existing_output(aligned):
    tmp, raw, out = aligned["tmp"], aligned["raw"], aligned["out"]
    with pytest.raises(FerlabError, match="lies inside the input folder"):
        run_align(align_cfg(tmp, f"input={raw}", f"output={raw / 'aligned'}"))
    with pytest.raises(FerlabError, match="contains the input folder"):
        run_align(align_cfg(tmp, f"input={raw}", f"output={tmp}", "overwrite=true"))
    with pytest.raises(FerlabError, match="already exists; resume=true"):
        run_align(align_cfg(tmp, f"input={raw}", f"output={out}", "size=64"))
    with pytest.raises(FerlabError, match="other settings"):
        run_align(align_cfg(tmp, f"input={raw}", f"output={out}", "size=32", "resume=true"))
    foreign = tmp / "foreign"
    (foreign / "keep").mkdir(parents=True)
    with pytest.raises(FerlabError, match="not written by ferlab align"):
        run_align(align_cfg(tmp, f"input={raw}", f"output={foreign}", "overwrite=true"))
    assert (foreign / "keep").is_dir()


def test_align_resumes_where_it_stopped(aligned, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(aligned["out"], out)
    journal = out / ".align-journal.jsonl"
    lines = journal.read_text().splitlines()
    gone = next(json.loads(line) for line in lines if json.loads(line)["written"])
    journal.write_text("\n".join(line for line in lines if json.loads(line)["file"] != gone["file"]) + "\n")
    (out / gone["written"][0]).unlink()  # as if the run had stopped before this photo
    report = run_align(align_cfg(tmp_path, f"input={aligned['raw']}", f"output={out}", "size=64", "resume=true"))
    assert report["counts"]["skipped_as_done"] == 9 and report["counts"]["aligned"] == 8
    assert (out / gone["written"][0]).is_file()


def test_rafdb_and_affectnet_landmarks_replace_detection(tmp_path):
    from ferlab.data.writers_wild import write_affectnet2021, write_rafdb

    rafdb = write_rafdb(tmp_path / "rafdb", 12, size=64)
    report = run_align(align_cfg(tmp_path, f"input={rafdb}", f"output={tmp_path / 'a'}", "landmarks=rafdb",
                                 "size=48"))
    assert report["counts"]["aligned"] == 12 and (tmp_path / "a" / "train" / "surprise" / "train_00001.jpg").is_file()
    assert json.loads((tmp_path / "a" / "align.json").read_text())["face"]["detector"] is None
    affectnet = write_affectnet2021(tmp_path / "affectnet", 10, size=64)
    report = run_align(align_cfg(tmp_path, f"input={affectnet}", f"output={tmp_path / 'b'}", "landmarks=affectnet",
                                 "size=48"))
    assert report["counts"]["aligned"] == 10
    bad = next((rafdb / "basic" / "Annotation" / "manual").glob("train_00002_*"))
    bad.write_text("12.5 not-a-number\n")
    with pytest.raises(FerlabError, match=f"{bad}: expected five lines 'x y'"):
        run_align(align_cfg(tmp_path, f"input={rafdb}", f"output={tmp_path / 'c'}", "landmarks=rafdb"))
    bad.write_text("".join(f"{5000 + k} {5000 + k}\n" for k in range(5)) + "0\n0\n2\n")  # another photo's points
    with pytest.raises(FerlabError, match=f"{bad}: landmarks .* lie outside"):
        run_align(align_cfg(tmp_path, f"input={rafdb}", f"output={tmp_path / 'd'}", "landmarks=rafdb"))
    lnd = next((affectnet / "train_set" / "annotations").glob("*_lnd.npy"))
    np.save(lnd, np.zeros(10))
    with pytest.raises(FerlabError, match=f"{lnd}: expected 68 landmarks"):
        run_align(align_cfg(tmp_path, f"input={affectnet}", f"output={tmp_path / 'e'}", "landmarks=affectnet"))


def test_affectnet_release_csv_landmarks(tmp_path):
    from ferlab.data.writers_wild import write_affectnet
    from ferlab.infer.landmarks import affectnet_items

    root = write_affectnet(tmp_path / "affectnet", 30, size=64)
    items = affectnet_items(root)
    assert items and all(i.landmarks.shape == (5, 2) for i in items)  # ids 8-10 left out
    report = run_align(align_cfg(tmp_path, f"input={root}", f"output={tmp_path / 'a'}", "landmarks=affectnet",
                                 "size=32"))
    assert report["counts"]["aligned"] == len(items)
    csv_path = root / "Manually_Annotated_file_lists" / "training.csv"
    lines = csv_path.read_text().splitlines()
    fields = lines[1].split(",")
    fields[5] = "1;2;3"
    csv_path.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    with pytest.raises(FerlabError, match=f"{csv_path}:2 \\(facial_landmarks\\): expected 68 landmarks"):
        affectnet_items(root)


def test_the_record_names_exactly_the_detectors_and_templates_infer_can_rebuild():
    """The record (ferlab.data.preprocessing) is checked without importing OpenCV: its names must be infer's."""
    from ferlab.data.preprocessing import DETECTORS, TEMPLATES
    from ferlab.infer.align import TEMPLATES as ALIGN_TEMPLATES
    from ferlab.infer.preprocessing import detector_classes

    assert DETECTORS == tuple(detector_classes()) and TEMPLATES == tuple(ALIGN_TEMPLATES)
