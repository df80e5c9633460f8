"""RAF-DB basic in both layouts (the release's list_patition_label.txt with aligned or original images, and the
DATASET/ re-upload with its label CSVs), written by `ferlab synth`'s writers: sizes, the 1..7 -> 0..6 label shift,
the aligned/original switch, bad lines named by file and line, and nothing written into the data folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ferlab.data.images import decode_image
from ferlab.data.sources.rafdb import RafDb
from ferlab.data.sources.registry import source_class
from ferlab.data.writers_wild import make_rafdb, write_rafdb, write_rafdb_folders
from ferlab.errors import FerlabError
from ferlab.labels import RAFDB

N, SEED, SIDE = 40, 1, 40


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_rafdb(tmp_path_factory.mktemp("rafdb") / "rafdb", N, seed=SEED, size=SIDE, test_fraction=0.25)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return write_rafdb_folders(tmp_path_factory.mktemp("rafdb") / "reupload", N, seed=SEED, size=SIDE, test_fraction=0.25)


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_release_sizes_label_shift_and_real_file_names(release):
    label_file = release / "basic" / "EmoLabel" / "list_patition_label.txt"  # the release's own spelling
    lines = [line.split() for line in label_file.read_text().splitlines()]
    assert all(re.fullmatch(r"train_\d{5}\.jpg|test_\d{4}\.jpg", name) for name, _ in lines)
    before = _snapshot(release)
    data = RafDb(str(release), image_size=32).read()
    assert data.images.shape == (N, 3, 32, 32) and data.images.dtype == np.uint8
    assert data.split_sizes() == {"train": 30, "test": 10}
    np.testing.assert_array_equal(data.targets, [int(y) - 1 for _, y in lines])  # 1..7 -> 0..6, in file order
    assert set(data.targets.tolist()) == set(range(len(RAFDB)))
    assert source_class("ferlab.data.sources.rafdb.RafDb") is RafDb  # rebuildable from a stored config
    assert _snapshot(release) == before  # read-only


def test_aligned_or_original_images(release):
    faces, _, _, names = make_rafdb(N, SEED, size=SIDE, test_fraction=0.25)  # what the writer rendered
    aligned = RafDb(str(release), image_size=SIDE).read().images
    original = RafDb(str(release), images="original", image_size=SIDE).read().images
    rendered = faces.transpose(0, 3, 1, 2).astype(float)
    assert np.abs(aligned - rendered).mean() < 6  # the aligned face, up to JPEG loss
    assert np.abs(original - rendered).mean() > 20  # the whole photo, background and all
    photo = decode_image(release / "basic" / "Image" / "original" / names[3], SIDE, 3)
    np.testing.assert_array_equal(original[3], photo)


def test_reupload_gives_the_same_faces_labels_and_splits(release, folders):
    assert (folders / "train_labels.csv").read_text().splitlines()[:2] == ["image,label", "train_00001_aligned.jpg,1"]
    a, b = RafDb(str(release), image_size=24).read(), RafDb(str(folders), image_size=24).read()
    rows = lambda d: sorted((img.tobytes(), int(y), int(s)) for img, y, s in zip(d.images, d.targets, d.split, strict=True))  # noqa: E731
    assert rows(a) == rows(b) and b.meta["unlisted_images"] == 0
    with pytest.raises(FerlabError, match="re-upload holds the aligned faces only"):
        RafDb(str(folders), images="original").read()


@pytest.mark.parametrize("edit, expected", [
    (lambda lines: lines.__setitem__(2, "train_00003.jpg 9"), r"list_patition_label.txt:3: unknown label '9'; expected 1-7"),
    (lambda lines: lines.__setitem__(4, "train_00005.jpg"), r"list_patition_label.txt:5: expected '<image name> <label"),
    (lambda lines: lines.__setitem__(6, "val_0001.jpg 2"), r"list_patition_label.txt:7: image name 'val_0001.jpg' starts"),
    (lambda lines: lines.append("train_99999.jpg 2"), r"list_patition_label.txt:41: image .*train_99999_aligned.jpg not found"),
])
def test_bad_label_lines_name_file_and_line(release, tmp_path, edit, expected):
    root = _copy(release, tmp_path)
    path = root / "basic" / "EmoLabel" / "list_patition_label.txt"
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerlabError, match=expected):
        RafDb(str(root), image_size=16).read()


def test_missing_images_skip_and_count_with_on_bad_sample_skip(release, tmp_path):
    root = _copy(release, tmp_path)
    (root / "basic" / "Image" / "aligned" / "test_0002_aligned.jpg").unlink()
    with pytest.raises(FerlabError, match=r"list_patition_label.txt:32: image .*test_0002_aligned.jpg not found"):
        RafDb(str(root), image_size=16).read()
    data = RafDb(str(root), image_size=16, on_bad_sample="skip").read()
    assert len(data.targets) == N - 1 and data.meta["dropped"] == {"missing_image": 1}
    assert len(RafDb(str(root), images="original", image_size=16).read().targets) == N  # originals all there


def test_reupload_csv_must_agree_with_the_folders(folders, tmp_path):
    root = _copy(folders, tmp_path)
    csv = root / "test_labels.csv"
    lines = csv.read_text().splitlines()
    name, label = lines[3].split(",")
    lines[3] = f"{name},{int(label) % 7 + 1}"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerlabError, match=rf"test_labels.csv:4: {name} is labelled {int(label) % 7 + 1} here but lies in test/{label}/"):
        RafDb(str(root), image_size=16).read()
    csv.write_text("\n".join([*lines[:3], "test_0404_aligned.jpg,2"]) + "\n")
    with pytest.raises(FerlabError, match=r"test_labels.csv:4: image 'test_0404_aligned.jpg' not found"):
        RafDb(str(root), image_size=16).read()
    (root / "DATASET" / "test" / "8").mkdir()
    with pytest.raises(FerlabError, match=r"test: expected the class folders \['1', .*found \['1', .*'8'\]"):
        RafDb(str(root), image_size=16).read()


def test_no_rafdb_layout_under_root_says_what_it_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerlabError, match=r"RAF-DB not found under .*empty: expected basic/EmoLabel/list_patition_label"):
        RafDb(str(tmp_path / "empty")).files()


@pytest.mark.slow
@pytest.mark.parametrize("split", ["random", "official"])
def test_train_runs_end_to_end_on_the_written_release(release, make_cfg, split):
    from ferlab.tasks.train import run_train

    cfg = make_cfg("data=rafdb", f"data.source.root={release}", "data.image_size=32", f"data.split={split}",
                   "data.batch_size=8", "model.width=8", "debug=fdr", "callbacks.rich_progress_bar=null",
                   "callbacks.rich_model_summary=null", fast=False)
    assert cfg.data.class_names == list(RAFDB) and cfg.data.mean == [0.485, 0.456, 0.406]
    sizes = run_train(cfg)["dataset"]["sizes"]
    assert sizes == ({"train": 27, "val": 3, "test": 10} if split == "random" else {"train": 30, "val": 10, "test": 10})
