"""The synthetic faces written in every official layout, so tests and users can try each reader offline.

FER2013: fer2013.csv, icml_face_data.csv (headers with leading spaces), the train.csv + test.csv pair (test.csv
without labels), the image-folder re-upload (train/<class>/*, test/<class>/*). FER+: fer2013new.csv
row-aligned with a written fer2013.csv, and the repository's FER2013{Train,Valid,Test}/label.csv folders with
their PNGs. Report 000's 5-class set: RGB (some gray) images of varying size in Angry/Happy/... folders.
Files are written atomically; folders are filled under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ferlab.data.pixels import format_pixel_rows
from ferlab.data.synthetic import render
from ferlab.labels import FER5, FER2013, FERPLUS
from ferlab.runs.io import atomic_write_text

# FER2013 label id -> FER+ vote column (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt)
FER2013_TO_FERPLUS = np.array([FERPLUS.index(n) for n in ("anger", "disgust", "fear", "happiness", "sadness",
                                                          "surprise", "neutral")])
FOLDER_OF_USAGE = {"Training": "train", "PublicTest": "test", "PrivateTest": "test"}
FERPLUS_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
FER5_FROM_FER2013 = np.array([FER2013.index(c.lower()) for c in FER5])  # Angry, Happy, Neutral, Sad, Surprise
FER5_TRAIN_SHARES = np.array([500, 1500, 1000, 1500, 500]) / 5000  # report 000's training counts


@contextmanager
def atomic_dir(root: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `root`; on success it replaces `root` in one rename."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        yield tmp
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_image(path: Path, image: np.ndarray) -> None:
    """uint8 (H,W) gray or (H,W,3) RGB to a PNG (or JPEG by extension)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_icml_csv(path: str | Path, images: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> Path:
    """Kaggle's icml_face_data.csv: columns `emotion, Usage, pixels` (the headers carry leading spaces)."""
    rows = format_pixel_rows(images)
    body = [f"{y},{u},{p}" for y, u, p in zip(labels.tolist(), usage.tolist(), rows, strict=True)]
    return atomic_write_text(path, "\n".join(["emotion, Usage, pixels", *body]) + "\n")


def write_train_test_csvs(folder: str | Path, images: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> tuple[Path, Path]:
    """Kaggle's pair: train.csv (`emotion,pixels`, the Training rows) and test.csv (`pixels` only: no labels)."""
    folder, rows = Path(folder), format_pixel_rows(images)
    train = usage == "Training"
    lines = ["emotion,pixels"] + [f'{y},"{p}"' for y, p, t in zip(labels.tolist(), rows, train, strict=True) if t]
    tests = ["pixels"] + [f'"{p}"' for p, t in zip(rows, train, strict=True) if not t]
    return atomic_write_text(folder / "train.csv", "\n".join(lines) + "\n"), atomic_write_text(folder / "test.csv", "\n".join(tests) + "\n")


def ferplus_votes(labels: np.ndarray, seed: int = 0, not_face: float = 0.01) -> tuple[np.ndarray, list[str]]:
    """Ten crowd votes per image around its FER2013 label, and FER+ image names ("" for non-faces).

    Agreement varies per image (clear majorities, two-way ties, spread votes, some unknown/contempt), so
    every label mode keeps and drops different rows. Names count faces only, as in fer2013new.csv.
    """
    rng = np.random.default_rng([seed, 404])
    n = len(labels)
    probs = np.full((n, 10), 0.02)  # a little of everything, unknown and NF included
    main = FER2013_TO_FERPLUS[labels]
    second = rng.integers(0, 8, n)
    probs[np.arange(n), main] += rng.uniform(0.3, 1.2, n)
    probs[np.arange(n), second] += rng.uniform(0.0, 0.6, n)
    probs[:, 8] += rng.uniform(0.0, 0.15, n)  # unknown
    votes = rng.multinomial(10, probs / probs.sum(1, keepdims=True))  # (N, 10)
    faceless = rng.random(n) < not_face
    if n >= 20 and not faceless.any():  # even a small fixture has a non-face row to skip
        faceless[n // 2] = True
    votes[faceless] = 0
    votes[faceless, 9] = 10  # NF: not a face
    names, k = [], 0
    for f in faceless:
        names.append("" if f else f"fer{k:07d}.png")
        k += 0 if f else 1
    return votes, names


def write_ferplus_csv(path: str | Path, votes: np.ndarray, usage: np.ndarray, names: list[str]) -> Path:
    """fer2013new.csv: `Usage,Image name,<8 emotions>,unknown,NF`, one row per fer2013.csv row."""
    head = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    body = [f"{u},{name}," + ",".join(map(str, v)) for u, name, v in zip(usage.tolist(), names, votes.tolist(), strict=True)]
    return atomic_write_text(path, "\n".join([head, *body]) + "\n")


def write_ferplus_folders(root: str | Path, images: np.ndarray, votes: np.ndarray, usage: np.ndarray,
                          names: list[str]) -> Path:
    """The FER+ repository layout: FER2013{Train,Valid,Test}/label.csv (`name,"(0, 0, 48, 48)",10 votes`) + PNGs."""
    with atomic_dir(root) as tmp:
        for use, folder in FERPLUS_FOLDERS.items():
            (tmp / folder).mkdir()
            rows = [i for i, (u, name) in enumerate(zip(usage.tolist(), names, strict=True)) if u == use and name]
            for i in rows:
                save_image(tmp / folder / names[i], images[i])
            lines = [f'{names[i]},"(0, 0, 48, 48)",' + ",".join(map(str, votes[i].tolist())) for i in rows]
            (tmp / folder / "label.csv").write_text("\n".join(lines) + "\n")
    return Path(root)


def write_image_folders(root: str | Path, images: Iterable[np.ndarray], labels: np.ndarray,
                        folders: list[str], class_names: tuple[str, ...] | list[str], ext: Callable[[int], str] | str = "png") -> Path:
    """root/<folder>/<class>/<folder>_<i>.<ext> for every image (uint8 (H,W) gray or (H,W,3) RGB)."""
    with atomic_dir(root) as tmp:
        for i, (image, y, folder) in enumerate(zip(images, labels.tolist(), folders, strict=True)):
            suffix = ext(i) if callable(ext) else ext
            save_image(tmp / folder / class_names[y] / f"{folder}_{i:05d}.{suffix}", image)
        for folder in set(folders):  # every class folder exists, even when a tiny set has no image of it
            for name in class_names:
                (tmp / folder / name).mkdir(parents=True, exist_ok=True)
    return Path(root)


def write_fer2013_folders(root: str | Path, images: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> Path:
    """The FER2013 re-upload: train/<class>/*.png (Training) and test/<class>/*.png (PublicTest + PrivateTest)."""
    return write_image_folders(root, list(images), labels, [FOLDER_OF_USAGE[u] for u in usage.tolist()], FER2013)


def make_fer5(num_images: int, seed: int = 0, size: int = 96, test_fraction: float = 0.2,
              difficulty: float = 0.3) -> tuple[Iterator[np.ndarray], np.ndarray, list[str]]:
    """Report 000-like faces: labels in FER5 order with its class imbalance, images RGB (every 7th gray) of a
    random side in [size/2, size], and their train/test folder. The images are made one at a time as the
    iterator is consumed (32,000 faces at 256 px would take gigabytes at once)."""
    rng = np.random.default_rng([seed, 5])
    labels = rng.choice(len(FER5), size=num_images, p=FER5_TRAIN_SHARES)
    folders = np.where(rng.random(num_images) < test_fraction, "test", "train")
    cover = min(2 * len(FER5), num_images)  # one image of every class in each folder first
    labels[:cover] = np.arange(cover) % len(FER5)
    folders[:cover] = np.where(np.arange(cover) < len(FER5), "train", "test")
    gray = render(FER5_FROM_FER2013[labels], seed=seed, difficulty=difficulty)  # (N, 48, 48)
    tint = rng.uniform(0.75, 1.15, (num_images, 1, 1, 3))  # per-image colour cast, (N,1,1,3)

    def images() -> Iterator[np.ndarray]:
        from PIL import Image

        for i, g in enumerate(gray):
            side = int(rng.integers(size // 2, size + 1))
            rgb = np.clip(g[..., None] * tint[i], 0, 255).astype(np.uint8)
            yield np.asarray(Image.fromarray(g if i % 7 == 6 else rgb).resize((side, side), Image.Resampling.BILINEAR))

    return images(), labels, folders.tolist()


def write_fer5_folders(root: str | Path, num_images: int, seed: int = 0, size: int = 96, test_fraction: float = 0.2) -> Path:
    """Report 000's layout: root/{train,test}/{Angry,Happy,Neutral,Sad,Surprise}/*.png|jpg."""
    images, labels, folders = make_fer5(num_images, seed, size, test_fraction)
    return write_image_folders(root, images, labels, folders, FER5, ext=lambda i: "jpg" if i % 5 == 4 else "png")


