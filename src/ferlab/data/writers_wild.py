"""The synthetic faces in the in-the-wild layouts, quirks included, so the RAF-DB and AffectNet readers can be
tried (and tested) without the data.

RAF-DB: the release (`basic/EmoLabel/list_patition_label.txt`, misspelled as in the release; 5-digit train and
4-digit test names; aligned faces and larger "original" photos) and the `DATASET/{train,test}/{1..7}/` re-upload
with its label CSVs. AffectNet: the release's CSV lists (training.csv with its header, validation.csv without;
face boxes, some running off the image, one of negative width; 68 landmarks; ids 8-10 with non-face images; mixed
extensions; valence/arousal, -2 for the uncertain and non-face rows and for a few class rows) and the March 2021
`train_set/` + `val_set/` layout with per-image `.npy` annotations (`<n>_exp`, `_val`, `_aro`, `_lnd`).
Class frequencies follow the real training sets. Folders are filled under a temporary name and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlab.data.synthetic import SIZE, landmarks, render
from ferlab.data.writers import atomic_dir, save_image
from ferlab.labels import AFFECTNET, AFFECTNET_NOT_CLASSES, FER2013, RAFDB

# RAF-DB basic's training counts per class (RAFDB order) and AffectNet's per id 0..10 (the papers' tables).
RAFDB_TRAIN_COUNTS = (1290, 281, 717, 4772, 1982, 705, 2524)
AFFECTNET_TRAIN_COUNTS = (74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750, 33088, 11645, 82414)
# the FER2013 class the renderer draws for each label (RAF-DB's "happiness" is FER2013's "happy", ...)
_SAME = {"happiness": "happy", "sadness": "sad", "anger": "angry", "contempt": "disgust"}
RAFDB_TO_FER2013 = np.array([FER2013.index(_SAME.get(c, c)) for c in RAFDB])
AFFECTNET_TO_FER2013 = np.array([FER2013.index(_SAME.get(c, c)) for c in AFFECTNET])
CONTEMPT, NON_FACE = AFFECTNET.index("contempt"), 10
N_IDS = len(AFFECTNET) + len(AFFECTNET_NOT_CLASSES)
# (valence, arousal) centre of each AffectNet class on Russell's circumplex, roughly where the dataset's own
# annotations cluster; a face's values are drawn around its class's centre
VA_CENTRES = {"neutral": (0.0, 0.0), "happy": (0.65, 0.25), "sad": (-0.6, -0.25), "surprise": (0.2, 0.65),
              "fear": (-0.5, 0.6), "disgust": (-0.6, 0.35), "anger": (-0.55, 0.55), "contempt": (-0.45, 0.2)}
VA_NOISE = 0.15  # standard deviation around the centre
VA_MISSING_EVERY = 11  # every 11th class row has no VA (-2), so the masking is exercised; ids 9 and 10 never do


def _draw(counts: tuple[int, ...], n: int, rng: np.random.Generator, cover: int) -> np.ndarray:
    """n labels drawn with the shares of `counts`; the first `cover` are 0, 1, ... so a tiny set has each."""
    labels = rng.choice(len(counts), size=n, p=np.asarray(counts, float) / sum(counts))
    k = min(cover, n)
    labels[:k] = np.arange(k) % len(counts)
    return labels


def colour_faces(gray: np.ndarray, seed: int, size: int) -> np.ndarray:
    """Rendered gray faces uint8 (N, 48, 48) as tinted RGB, uint8 (N, size, size, 3)."""
    from PIL import Image

    rng = np.random.default_rng([seed, 77])
    tint = rng.uniform(0.75, 1.15, (len(gray), 1, 1, 3))  # a colour cast per face
    rgb = np.clip(gray[..., None].astype(np.float32) * tint, 0, 255).astype(np.uint8)
    if size == rgb.shape[1]:
        return rgb
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR)) for f in rgb])


def make_rafdb(num_images: int, seed: int = 0, difficulty: float = 0.5, size: int = 100,
               test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Aligned faces uint8 (N,S,S,3), labels 0..6 (RAFDB order), splits and release names (train_00001.jpg)."""
    rng = np.random.default_rng([seed, 15339])
    n_test = min(max(round(num_images * test_fraction), 1 if num_images > 1 else 0), num_images - 1)
    splits = ["train"] * (num_images - n_test) + ["test"] * n_test
    labels = np.concatenate([_draw(RAFDB_TRAIN_COUNTS, num_images - n_test, rng, len(RAFDB)),
                             _draw(RAFDB_TRAIN_COUNTS, n_test, rng, len(RAFDB))])
    names = [f"train_{i + 1:05d}.jpg" for i in range(num_images - n_test)] + [f"test_{i + 1:04d}.jpg" for i in range(n_test)]
    faces = colour_faces(render(RAFDB_TO_FER2013[labels], seed=seed, difficulty=difficulty), seed, size)
    return faces, labels, splits, names


def _in_photo(face: np.ndarray, rng: np.random.Generator, edge: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """`face` (S,S,3) pasted into a larger noisy photo (H,W,3); returns it and the face's (x, y).

    edge: the face runs off the photo's right and bottom edges (clipped there), so its box does too."""
    s = face.shape[0]
    h, w = (int(s * rng.uniform(1.3, 2.2)) for _ in range(2))
    photo = rng.integers(0, 256, (1, 1, 3)) * 0.6 + rng.normal(0, 25, (h, w, 3))
    x, y = (w - s // 2, h - s // 3) if edge else (int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1)))
    x1, y1 = min(x + s, w), min(y + s, h)
    photo[y:y1, x:x1] = face[: y1 - y, : x1 - x]
    return np.clip(photo, 0, 255).astype(np.uint8), (x, y)


def face_landmarks(fer_labels: np.ndarray, seed: int, difficulty: float, size: int) -> np.ndarray:
    """The five landmarks (N, 5, 2) of the rendered faces once resized to size x size (pixel coordinates)."""
    return (landmarks(fer_labels, seed=seed, difficulty=difficulty) + 0.5) * (size / SIZE) - 0.5


def manual_attributes(points: np.ndarray, rng: np.random.Generator) -> str:
    """A RAF-DB `_manu_attri.txt`: five lines "x<TAB>y" (eye centres, nose tip, mouth corners), then gender (0-2),
    race (0-2) and age group (0-4)."""
    lines = [f"{x:.2f}\t{y:.2f}" for x, y in points]
    return "\n".join([*lines, *(str(int(rng.integers(0, k))) for k in (3, 3, 5))]) + "\n"


def write_rafdb(root: str | Path, num_images: int, seed: int = 0, difficulty: float = 0.5, size: int = 100,
                test_fraction: float = 0.2) -> Path:
    """The release: basic/EmoLabel/list_patition_label.txt, basic/Image/aligned/*_aligned.jpg, basic/Image/original/*.jpg
    and basic/Annotation/manual/*_manu_attri.txt (the five landmarks of each original photo's face)."""
    faces, labels, splits, names = make_rafdb(num_images, seed, difficulty, size, test_fraction)
    marks = face_landmarks(RAFDB_TO_FER2013[labels], seed, difficulty, size)
    rng = np.random.default_rng([seed, 100])
    with atomic_dir(root) as tmp:
        basic = tmp / "basic"
        (basic / "Annotation" / "manual").mkdir(parents=True)
        for face, name, points in zip(faces, names, marks, strict=True):
            stem = name.rsplit(".", 1)[0]
            save_image(basic / "Image" / "aligned" / f"{stem}_aligned.jpg", face)
            photo, (x, y) = _in_photo(face, rng)
            save_image(basic / "Image" / "original" / name, photo)
            text = manual_attributes(points + [x, y], rng)
            (basic / "Annotation" / "manual" / f"{stem}_manu_attri.txt").write_text(text)
        lines = [f"{name} {y + 1}" for name, y in zip(names, labels.tolist(), strict=True)]
        (basic / "EmoLabel").mkdir(parents=True)
        (basic / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return Path(root)


def write_rafdb_folders(root: str | Path, num_images: int, seed: int = 0, difficulty: float = 0.5, size: int = 100,
                        test_fraction: float = 0.2) -> Path:
    """The re-upload: DATASET/{train,test}/{1..7}/<stem>_aligned.jpg and {train,test}_labels.csv (image,label)."""
    faces, labels, splits, names = make_rafdb(num_images, seed, difficulty, size, test_fraction)
    with atomic_dir(root) as tmp:
        rows: dict[str, list[str]] = {"train": ["image,label"], "test": ["image,label"]}
        for face, y, split, name in zip(faces, labels.tolist(), splits, names, strict=True):
            file = f"{name.rsplit('.', 1)[0]}_aligned.jpg"
            save_image(tmp / "DATASET" / split / str(y + 1) / file, face)
            rows[split].append(f"{file},{y + 1}")
        for split, lines in rows.items():
            for k in range(1, len(RAFDB) + 1):  # every class folder exists, even when a tiny set has no image of it
                (tmp / "DATASET" / split / str(k)).mkdir(parents=True, exist_ok=True)
            (tmp / f"{split}_labels.csv").write_text("\n".join(lines) + "\n")
    return Path(root)


def affectnet_ids(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Expression ids 0..10 (training: the real shares; validation: even, as the release's 500 per id) and
    whether each row is in validation."""
    n_val = min(max(round(n * val_fraction), 1 if n > 1 else 0), n - 1)
    val_ids = np.arange(n_val) % N_IDS
    ids = np.concatenate([_draw(AFFECTNET_TRAIN_COUNTS, n - n_val, rng, N_IDS), rng.permutation(val_ids)])
    return ids, np.arange(n) >= n - n_val


def affectnet_faces(ids: np.ndarray, seed: int, difficulty: float, size: int) -> np.ndarray:
    """uint8 (N,S,S,3): a face per class id (contempt: disgust on one side of the mouth only), a face of a random
    class for none/uncertain, and a smooth non-face texture for id 10."""
    rng = np.random.default_rng([seed, 8])
    fer = np.where(ids < len(AFFECTNET), AFFECTNET_TO_FER2013[np.minimum(ids, len(AFFECTNET) - 1)],
                   rng.integers(0, len(FER2013), len(ids)))
    gray = render(fer, seed=seed, difficulty=difficulty)  # (N, 48, 48)
    contempt = np.flatnonzero(ids == CONTEMPT)
    if len(contempt):  # a one-sided expression: the right half of the lower face from a neutral render
        calm = render(np.full(len(contempt), FER2013.index("neutral")), seed=seed + 1, difficulty=difficulty)
        gray[contempt, SIZE // 2 :, SIZE // 2 :] = calm[:, SIZE // 2 :, SIZE // 2 :]
    faces = colour_faces(gray, seed, size)
    for i in np.flatnonzero(ids == NON_FACE):
        coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        faces[i] = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size].astype(np.uint8)
    return faces


def affectnet_va(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) float valence/arousal of expression ids 0..10: around the class's centre (clipped to [-1, 1]) for
    ids 0-7, anywhere for 8 (none), -2 (not annotated) for 9 (uncertain), 10 (non-face) and every
    VA_MISSING_EVERY-th class row."""
    centres = np.array([VA_CENTRES[c] for c in AFFECTNET])  # (8, 2)
    va = np.clip(centres[np.minimum(ids, len(AFFECTNET) - 1)] + rng.normal(0, VA_NOISE, (len(ids), 2)), -1, 1)
    va[ids == 8] = rng.uniform(-1, 1, (int((ids == 8).sum()), 2))
    missing = (ids >= 9) | ((np.arange(len(ids)) % VA_MISSING_EVERY == VA_MISSING_EVERY - 1) & (ids < len(AFFECTNET)))
    va[missing] = -2.0
    return va.round(6)


def affectnet_landmarks(ids: np.ndarray, seed: int, difficulty: float, size: int) -> np.ndarray:
    """The five landmarks (N, 5, 2) of `affectnet_faces`' faces (for the classes; the others are not faces)."""
    rng = np.random.default_rng([seed, 8])  # the classes `affectnet_faces` draws for none/uncertain rows
    fer = np.where(ids < len(AFFECTNET), AFFECTNET_TO_FER2013[np.minimum(ids, len(AFFECTNET) - 1)],
                   rng.integers(0, len(FER2013), len(ids)))
    return face_landmarks(fer, seed, difficulty, size)


HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
_ANGLES = np.linspace(0, 2 * np.pi, 68, endpoint=False)
LANDMARKS = np.stack([0.5 + 0.4 * np.cos(_ANGLES), 0.55 + 0.4 * np.sin(_ANGLES)], 1)  # (68, 2) in the unit box
_HEXAGON = np.stack([np.cos(np.arange(6) * np.pi / 3), 0.5 * np.sin(np.arange(6) * np.pi / 3)], 1)  # (6, 2)


def points_68(five: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """68 iBUG-layout points (68, 2) for a face with these five landmarks in its box: jaw and brows on an ellipse of
    the box, each eye a hexagon around its centre (36-41, 42-47), the nose tip 30, the mouth corners 48 and 54 with
    the lips between them; `ferlab.infer.landmarks.five_from_68` gives the five back."""
    x, y, w, h = box
    points = LANDMARKS * [abs(w), h] + [x, y]
    eye_r = 0.3 * np.linalg.norm(five[1] - five[0]) / 2
    points[36:42], points[42:48] = five[0] + eye_r * _HEXAGON, five[1] + eye_r * _HEXAGON
    points[27:36] = five[2] + np.linspace(-0.25, 0.05, 9)[:, None] * [0.0, abs(w)]
    points[30] = five[2]
    t = np.linspace(0, 1, 7)[:, None]
    lips = five[3] + t * (five[4] - five[3])
    points[48:55], points[54:60], points[60:68] = lips, lips[::-1][:6], np.resize(lips[1:-1], (8, 2))
    points[54], points[48] = five[4], five[3]
    return points


def _release_row(sub: str, box: tuple[int, int, int, int], expression: int, va: np.ndarray, five: np.ndarray) -> str:
    """One CSV line: path, face box, 68 landmarks (x;y;...), expression, valence, arousal (-2: not annotated)."""
    x, y, w, h = box
    marks = ";".join(f"{v:.2f}" for v in points_68(five, box).ravel())
    return f"{sub},{x},{y},{w},{h},{marks},{expression},{va[0]:g},{va[1]:g}"


def write_affectnet(root: str | Path, num_images: int, seed: int = 0, difficulty: float = 0.5, size: int = 96,
                    val_fraction: float = 0.1) -> Path:
    """The release: Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/<dir>/<hex>.<ext>.

    Quirks: validation.csv has no header; every 8th face runs off the photo's edge (its box is clamped by the
    reader); one training row (beyond the first of each id) has a box of negative width; ids 8-10 are present.
    """
    rng = np.random.default_rng([seed, 2017])
    ids, is_val = affectnet_ids(num_images, val_fraction, rng)
    faces = affectnet_faces(ids, seed, difficulty, size)
    va = affectnet_va(ids, np.random.default_rng([seed, 2018]))
    marks = affectnet_landmarks(ids, seed, difficulty, size)
    odd = np.flatnonzero(~is_val & (ids < len(AFFECTNET)) & (np.arange(num_images) >= N_IDS))  # not a cover row
    negative = int(odd[0]) if len(odd) else -1
    lines: dict[bool, list[str]] = {False: [HEADER], True: []}
    with atomic_dir(root) as tmp:
        for i, (face, expression, val) in enumerate(zip(faces, ids.tolist(), is_val.tolist(), strict=True)):
            photo, (x, y) = _in_photo(face, rng, edge=i % 8 == 3)
            ext = ".png" if i % 9 == 4 else ".JPG" if i % 13 == 6 else ".jpg"
            sub = f"{int(rng.integers(1, 1000))}/{rng.bytes(20).hex()}{ext}"
            save_image(tmp / "Manually_Annotated_Images" / sub, photo)
            box = (x, y, -size if i == negative else size, size)
            lines[val].append(_release_row(sub, box, expression, va[i], marks[i] + [x, y]))
        lists = tmp / "Manually_Annotated_file_lists"
        lists.mkdir()
        (lists / "training.csv").write_text("\n".join(lines[False]) + "\n")
        (lists / "validation.csv").write_text("\n".join(lines[True]) + "\n")
    return Path(root)


def write_affectnet2021(root: str | Path, num_images: int, seed: int = 0, difficulty: float = 0.5, size: int = 96,
                        val_fraction: float = 0.1) -> Path:
    """March 2021: {train_set,val_set}/images/<n>.jpg (cropped faces) and annotations/<n>_{exp,val,aro,lnd}.npy,
    ids 0..7 only (expression, valence and arousal stored as numpy strings, as released; -2: no VA), n counting
    up with gaps."""
    rng = np.random.default_rng([seed, 2021])
    n_val = min(max(round(num_images * val_fraction), 1 if num_images > 1 else 0), num_images - 1)
    ids = np.concatenate([_draw(AFFECTNET_TRAIN_COUNTS[: len(AFFECTNET)], num_images - n_val, rng, len(AFFECTNET)),
                          np.arange(n_val) % len(AFFECTNET)])
    faces = affectnet_faces(ids, seed, difficulty, size)
    va = affectnet_va(ids, np.random.default_rng([seed, 2022]))
    marks = affectnet_landmarks(ids, seed, difficulty, size)
    numbers = np.cumsum(rng.integers(1, 4, num_images)) - 1
    with atomic_dir(root) as tmp:
        for i, (face, expression, n) in enumerate(zip(faces, ids.tolist(), numbers.tolist(), strict=True)):
            folder = tmp / ("val_set" if i >= num_images - n_val else "train_set")
            save_image(folder / "images" / f"{n}.jpg", face)
            notes = folder / "annotations"
            notes.mkdir(parents=True, exist_ok=True)
            np.save(notes / f"{n}_exp.npy", np.array(str(expression)))
            for key, value in zip(("val", "aro"), va[i].tolist(), strict=True):
                np.save(notes / f"{n}_{key}.npy", np.array(f"{value:g}"))
            np.save(notes / f"{n}_lnd.npy", points_68(marks[i], (0, 0, size, size)).ravel().round(2))
    return Path(root)
