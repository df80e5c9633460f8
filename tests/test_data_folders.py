"""Image-folder datasets (FER2013 re-upload, report 000's fer5, generic folder): sizes, label mapping,
conversion to the configured size/channels, every bad-input case, and nothing written into the data folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferlab.data.cache import load_or_build
from ferlab.data.datamodule import FERDataModule
from ferlab.data.sources.folders import ImageFolders
from ferlab.data.synthetic import SynthSpec, make_dataset
from ferlab.data.writers import write_fer5_folders, write_fer2013_folders
from ferlab.errors import FerlabError
from ferlab.labels import FER5, FER2013


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def fer2013_dir(tmp_path_factory):
    images, labels, usage = make_dataset(SynthSpec(num_images=120, seed=8, val_fraction=0.1, test_fraction=0.15),
                                         cover_classes=True)
    root = write_fer2013_folders(tmp_path_factory.mktemp("f13") / "fer2013", images, labels, usage)
    return root, images, labels, usage


@pytest.fixture(scope="module")
def fer5_dir(tmp_path_factory):
    return write_fer5_folders(tmp_path_factory.mktemp("f5") / "fer5", num_images=60, seed=2, size=64)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_fer2013_folders_sizes_labels_and_pixels(fer2013_dir, tmp_path):
    root, images, labels, usage = fer2013_dir
    before = _snapshot(root)
    dm = FERDataModule(ImageFolders(str(root), FER2013), name="fer2013_folders", num_classes=7, class_names=FER2013,
                       in_chans=1, image_size=48, split="random", val_fraction=0.2, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    n_train = int((usage == "Training").sum())
    assert dm.sizes["test"] == 120 - n_train and dm.sizes["train"] + dm.sizes["val"] == n_train
    assert abs(dm.sizes["val"] - 0.2 * n_train) <= 7  # stratified: rounded per class
    # every test image is byte-identical to the rendered face and carries its class
    test = dm.splits["test"]
    rendered = {images[i].tobytes(): labels[i] for i in np.flatnonzero(usage != "Training")}
    assert all(rendered[img[0].numpy().tobytes()] == y for img, y in zip(*test, strict=True))
    assert dm.meta["files"]["train"]["disgust"] >= 1
    assert _snapshot(root) == before  # read-only: nothing written into the data folder


def test_fer5_any_size_rgb_or_gray_becomes_the_configured_input(fer5_dir, tmp_path):
    sizes = {Image.open(p).size for p in fer5_dir.rglob("*.*")}
    modes = {Image.open(p).mode for p in fer5_dir.rglob("*.*")}
    assert len(sizes) > 5 and {"L", "RGB"} <= modes and any(fer5_dir.rglob("*.jpg"))
    for channels, size in ((3, 40), (1, 32)):
        data = ImageFolders(str(fer5_dir), FER5, image_size=size, channels=channels).read()
        assert data.images.shape[1:] == (channels, size, size) and data.images.dtype == np.uint8
    counts = np.bincount(data.targets, minlength=5)
    by_disk = [len(list(fer5_dir.glob(f"*/{c}/*"))) for c in FER5]
    assert counts.tolist() == by_disk


def test_class_folders_match_case_insensitively_in_label_order(fer5_dir, tmp_path):
    root = _copy(fer5_dir, tmp_path)
    for split in ("train", "test"):
        os.rename(root / split / "Happy", root / split / "hAPPY")
    data = ImageFolders(str(root), FER5, image_size=16, channels=1).read()
    happy = sorted(str(p.name) for p in root.glob("*/hAPPY/*"))
    assert (data.targets == FER5.index("Happy")).sum() == len(happy)


@pytest.mark.parametrize("case, expected", [
    ("unknown", r"train: class folders do not match the classes: expected \['Angry', .*unknown: \['Bored'\], missing: \[\]"),
    ("missing", r"test: class folders do not match .*missing: \['Sad'\]"),
    ("empty", r"train/Surprise: no images for class 'Surprise' \(empty class folder\)"),
    ("no_split", r"'test' split folder not found: .*fer5/test \(no such folder"),
    ("no_root", r"image folder dataset not found: .*nowhere"),
])
def test_folder_layout_errors_list_expected_and_found(fer5_dir, tmp_path, case, expected):
    root = _copy(fer5_dir, tmp_path)
    if case == "unknown":
        (root / "train" / "Bored").mkdir()
        Image.new("L", (8, 8)).save(root / "train" / "Bored" / "x.png")
    elif case == "missing":
        shutil.rmtree(root / "test" / "Sad")
    elif case == "empty":
        for p in (root / "train" / "Surprise").iterdir():
            p.unlink()
    elif case == "no_split":
        shutil.rmtree(root / "test")
    else:
        root = tmp_path / "nowhere"
    with pytest.raises(FerlabError, match=expected):
        ImageFolders(str(root), FER5, image_size=16, channels=3).read()


def _break_images(root: Path) -> tuple[Path, Path]:
    junk = root / "train" / "Angry" / "junk.png"
    junk.write_bytes(b"this is not a png")
    good = next((root / "train" / "Sad").glob("*.png"))
    cut = root / "train" / "Sad" / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return junk, cut


def test_undecodable_and_truncated_images_error_or_skip(fer5_dir, tmp_path):
    root = _copy(fer5_dir, tmp_path)
    junk, cut = _break_images(root)
    with pytest.raises(FerlabError, match=r"(junk|cut)\.png: cannot use this image .*on_bad_sample=skip"):
        ImageFolders(str(root), FER5, image_size=16, channels=3).read()
    data = ImageFolders(str(root), FER5, image_size=16, channels=3, on_bad_sample="skip").read()
    bad = data.meta["bad_samples"]
    assert bad["count"] == 2 and {Path(s.split(":")[0]).name for s in bad["first"]} == {"junk.png", "cut.png"}
    assert len(data.targets) == len(list(fer5_dir.rglob("*.*")))


def test_images_above_the_pixel_cap_are_refused_before_decoding(fer5_dir, tmp_path):
    root = _copy(fer5_dir, tmp_path)
    Image.new("RGB", (300, 200)).save(root / "test" / "Angry" / "big.png")
    with pytest.raises(FerlabError, match=r"big.png: cannot use this image \(300x200 = 60000 pixels is above the cap of 50000"):
        ImageFolders(str(root), FER5, image_size=16, channels=3, max_pixels=50_000).read()


def test_non_image_and_hidden_files_are_ignored_and_counted(fer5_dir, tmp_path):
    root = _copy(fer5_dir, tmp_path)
    (root / "train" / "Angry" / "notes.txt").write_text("hi")
    (root / "train" / ".DS_Store").write_text("x")
    data = ImageFolders(str(root), FER5, image_size=16, channels=1).read()
    assert data.meta["ignored_non_image_files"] == 1 and len(data.targets) == len(list(fer5_dir.rglob("*.*")))


def test_cache_follows_added_files_and_decode_settings(fer5_dir, tmp_path):
    root, cache = _copy(fer5_dir, tmp_path), tmp_path / "cache"
    n = len(load_or_build(ImageFolders(str(root), FER5, image_size=16, channels=1), cache).targets)
    shutil.copy(next(root.glob("train/Sad/*.png")), root / "train" / "Sad" / "extra.png")
    assert len(load_or_build(ImageFolders(str(root), FER5, image_size=16, channels=1), cache).targets) == n + 1
    data = load_or_build(ImageFolders(str(root), FER5, image_size=24, channels=3), cache)
    assert data.images.shape[1:] == (3, 24, 24) and len(list(cache.glob("*.npz"))) == 2


def test_generic_folder_option_takes_any_class_list(make_cfg, tmp_path):
    from hydra.utils import instantiate

    root = tmp_path / "pets"
    for split in ("train", "test"):
        for name in ("Cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20 + i, 30), (40 * i, 90, 200)).save(root / split / name / f"{i}.jpg")
    cfg = make_cfg("data=folder", f"data.source.root={root}", "data.class_names=[cat,dog]", "data.val_fraction=0.34",
                   fast=False)
    assert cfg.data.num_classes == 2 and cfg.model.num_classes == 2
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert dm.sizes == {"train": 4, "val": 2, "test": 6} and dm.class_counts.tolist() == [2, 2]
