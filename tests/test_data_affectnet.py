"""AffectNet in both layouts (the release's CSV lists with face boxes, the March 2021 per-image annotations), written
by `ferlab synth`'s writers: the face-box crop (clamped at the image's edge), rows dropped and counted (ids 8-10,
negative widths, contempt under classes=7), header detection, and bad rows named by file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferlab.data.images import BadImage, decode_image
from ferlab.data.sources.affectnet import AffectNet
from ferlab.data.sources.registry import source_class
from ferlab.data.writers_wild import write_affectnet, write_affectnet2021
from ferlab.errors import FerlabError
from ferlab.labels import AFFECTNET

N, SIDE = 80, 40


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_affectnet(tmp_path_factory.mktemp("affectnet") / "affectnet", N, seed=2, size=SIDE, val_fraction=0.2)


@pytest.fixture(scope="module")
def v2021(tmp_path_factory) -> Path:
    return write_affectnet2021(tmp_path_factory.mktemp("affectnet") / "a2021", 40, seed=3, size=SIDE)


def _rows(path: Path) -> list[list[str]]:
    """An AffectNet list's data rows, split by comma (the writer writes no quotes)."""
    lines = [line.split(",") for line in path.read_text().splitlines()]
    return lines[1:] if lines[0][0] == "subDirectory_filePath" else lines


def _lists(root: Path) -> tuple[Path, Path]:
    return root / "Manually_Annotated_file_lists" / "training.csv", root / "Manually_Annotated_file_lists" / "validation.csv"


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def test_face_box_is_cropped_clamped_and_refused_when_outside(tmp_path):
    photo = np.zeros((60, 80, 3), np.uint8)
    photo[10:30, 50:80] = (200, 40, 10)  # a red "face" touching the right edge
    Image.fromarray(photo).save(tmp_path / "p.png")
    Image.fromarray(np.kron(photo, np.ones((20, 20, 1), np.uint8))).save(tmp_path / "big.jpg", quality=95)
    whole = decode_image(tmp_path / "p.png", 16, 3)
    face = decode_image(tmp_path / "p.png", 16, 3, box=(50, 10, 30, 20))
    clamped = decode_image(tmp_path / "p.png", 16, 3, box=(50, 10, 45, 20))  # runs 15 px off the right edge
    assert whole.reshape(3, -1).std(1).max() > 50 and np.array_equal(face, clamped)
    assert (face[0] == 200).all() and (face[1] == 40).all()
    drafted = decode_image(tmp_path / "big.jpg", 16, 3, box=(1000, 200, 600, 400))  # JPEG decoded at a reduced scale
    assert np.abs(drafted.astype(int) - face).max() <= 6
    with pytest.raises(BadImage, match=r"face box \(x=90, y=10, w=30, h=20\) lies outside the 80x60 image"):
        decode_image(tmp_path / "p.png", 16, 3, box=(90, 10, 30, 20))


def test_exif_rotated_photo_is_cropped_as_displayed(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)  # landscape as stored; EXIF 6 shows it turned to portrait (60 tall)
    stored[:20, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    shown = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))  # (60, 40, 3)
    ys, xs = np.nonzero(shown[..., 0] > 128)
    box = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert decode_image(tmp_path / "r.jpg", 8, 1, box=box).min() > 200


def test_release_crops_each_face_to_its_box_and_counts_what_it_drops(release):
    train, val = _lists(release)
    rows, n_train = _rows(train) + _rows(val), len(_rows(train))
    ids = np.array([int(r[6]) for r in rows])
    kept = (ids < 8) & (np.array([int(r[3]) for r in rows]) > 0)
    data = AffectNet(str(release), image_size=SIDE).read()
    assert data.split_sizes() == {"train": int(kept[:n_train].sum()), "test": int(kept[n_train:].sum())}
    np.testing.assert_array_equal(data.targets, ids[kept])
    assert data.meta["dropped"] == {"none": int((ids == 8).sum()), "uncertain": int((ids == 9).sum()),
                                    "non_face": int((ids == 10).sum()), "invalid_box": 1}
    assert {".png", ".JPG", ".jpg"} == {Path(r[0]).suffix for r in rows}
    landmarks = rows[0][5].split(";")
    assert len(landmarks) == 136 and all(float(v) >= 0 for v in landmarks)
    clamped = 0
    for k, r in enumerate(r for r, keep in zip(rows, kept, strict=True) if keep):
        # the reader's face is exactly the box's pixels (clamped to the photo), resized
        photo = Image.open(release / "Manually_Annotated_Images" / r[0]).convert("RGB")
        x, y, w, h = map(int, r[1:5])
        clamped += x + w > photo.width or y + h > photo.height
        box = (x, y, min(x + w, photo.width), min(y + h, photo.height))
        want = np.asarray(photo.crop(box).resize((SIDE, SIDE), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        np.testing.assert_array_equal(data.images[k], want)
    assert clamped >= 2


def test_seven_classes_drop_contempt_too(release):
    eight, seven = (AffectNet(str(release), classes=c, image_size=16).read() for c in (8, 7))
    contempt = int((eight.targets == AFFECTNET.index("contempt")).sum())
    assert contempt >= 1 and len(seven.targets) == len(eight.targets) - contempt
    assert seven.targets.max() == 6 and seven.meta["dropped"]["contempt"] == contempt
    assert source_class("ferlab.data.sources.affectnet.AffectNet") is AffectNet
    with pytest.raises(FerlabError, match="data.source.classes: expected 8 .* or 7"):
        AffectNet(str(release), classes=6)


def test_header_line_is_detected_not_assumed(release, tmp_path):
    train, val = _lists(release)
    assert train.read_text().startswith("subDirectory_filePath,face_x") and not val.read_text().startswith("sub")
    reference = AffectNet(str(release), image_size=16).read()
    root = _copy(release, tmp_path)
    train, val = _lists(root)
    head, body = train.read_text().split("\n", 1)
    train.write_text(body)  # the header moves from training.csv to validation.csv
    val.write_text(head + "\n" + val.read_text())
    data = AffectNet(str(root), image_size=16).read()
    np.testing.assert_array_equal(data.targets, reference.targets)
    np.testing.assert_array_equal(data.images, reference.images)


@pytest.mark.parametrize("column, value, expected", [
    (3, "abc", r"training.csv:4: face_width 'abc' is not a number"),
    (6, "11", r"training.csv:4: unknown expression id '11'; expected 0-7 \(neutral, .*\) or 8-10"),
    (0, "5/nothing.jpg", r"training.csv:4: image .*5/nothing.jpg not found"),
    (9, "extra", r"training.csv:4: expected 9 fields, found 10"),
])
def test_bad_rows_name_file_and_line(release, tmp_path, column, value, expected):
    root = _copy(release, tmp_path)
    train = _lists(root)[0]
    lines = train.read_text().splitlines()
    fields = lines[3].split(",")
    fields[6] = "1"  # a class row, so the box and the image matter
    if column < len(fields):
        fields[column] = value
    else:
        fields.append(value)
    lines[3] = ",".join(fields)
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerlabError, match=expected):
        AffectNet(str(root), image_size=16).read()


def test_2021_layout_reads_per_image_annotations(v2021, tmp_path):
    notes = sorted((v2021 / "train_set" / "annotations").glob("*_exp.npy"), key=lambda p: int(p.name.split("_")[0]))
    assert np.load(notes[0]).dtype.kind == "U"  # stored as numpy strings, as released
    data = AffectNet(str(v2021), image_size=SIDE).read()
    n_train = len(notes)
    assert data.split_sizes() == {"train": n_train, "test": 40 - n_train}
    np.testing.assert_array_equal(data.targets[:n_train], [int(np.load(p)) for p in notes])
    first = v2021 / "train_set" / "images" / f"{notes[0].name.split('_')[0]}.jpg"
    np.testing.assert_array_equal(data.images[0], decode_image(first, SIDE, 3))  # already a face: no crop
    root = _copy(v2021, tmp_path)
    np.save(root / "train_set" / "annotations" / notes[2].name, np.array("x"))
    with pytest.raises(FerlabError, match=rf"{notes[2].name}: unknown expression id 'x'"):
        AffectNet(str(root)).read()
    np.save(root / "train_set" / "annotations" / notes[2].name, np.array("7"))
    (root / "train_set" / "images" / first.name).unlink()
    with pytest.raises(FerlabError, match=rf"{notes[0].name}: image .*{first.name} not found"):
        AffectNet(str(root)).read()


@pytest.mark.slow
@pytest.mark.parametrize("classes", [8, 7])
def test_train_runs_end_to_end_with_the_chosen_classes(v2021, make_cfg, classes):
    from ferlab.tasks.train import run_train

    cfg = make_cfg("data=affectnet", f"data.source.root={v2021}", f"data.source.classes={classes}", "data.image_size=32",
                   "data.batch_size=8", "data.sampler=balanced", "loss=weighted_ce", "model.width=8", "debug=fdr",
                   "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null", fast=False)
    assert cfg.data.num_classes == classes == cfg.model.num_classes and cfg.data.class_names == list(AFFECTNET[:classes])
    sizes = run_train(cfg)["dataset"]["sizes"]
    ids = {s: [int(np.load(p)) for p in (v2021 / s / "annotations").glob("*_exp.npy")] for s in ("train_set", "val_set")}
    assert sizes["train"] + sizes["val"] == sum(i < classes for i in ids["train_set"])
    assert sizes["test"] == sum(i < classes for i in ids["val_set"]) and sizes["val"] >= 1


def test_list_rows_is_the_one_reader_of_an_affectnet_list(tmp_path):
    """The reader and `ferlab align`'s landmarks share it: blank lines and the header skipped, rows numbered."""
    from ferlab.data.sources.affectnet import COLUMNS, list_rows

    path = tmp_path / "validation.csv"
    row = ["a/1.jpg", "0", "0", "10", "10", "1;2", "1", "0.5", "-0.5"][:len(COLUMNS)]
    path.write_text("\n".join([",".join(COLUMNS), "", ",".join(row)]) + "\n")
    ((fields, index, where),) = list(list_rows(path))
    assert fields == row and where == f"{path}:3" and index["fields"] == len(COLUMNS)
