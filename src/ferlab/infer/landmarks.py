"""Datasets that ship their own landmarks, listed for `ferlab align` (their landmarks are used instead of a detector).

RAF-DB basic: `basic/Annotation/manual/<stem>_manu_attri.txt` for the uncropped photo `basic/Image/original/<name>`:
the first five lines are "x y" (tab- or space-separated) of the eye centres, the nose tip and the mouth corners, in
the photo's pixels, then three lines of gender, race and age. AffectNet: 68 points (the iBUG layout) per face, as the
CSV lists' `facial_landmarks` column ("x;y;x;y;...", photo pixels) or the 2021 layout's `annotations/<n>_lnd.npy`
(136 values x, y, ... in the cropped image's pixels), reduced to five points: the eye centres (mean of points 36-41
and 42-47), the nose tip (30) and the mouth corners (48, 54).

The outputs are class folders per split (`<split>/<class>/<file>`), which `data=folder` reads with the dataset's
classes. Labels and splits come from the datasets' own readers' parsers; a landmark file or field that does not
parse is one line naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlab.data.sources.affectnet import LISTS, SETS_2021, _npy_value, expression_id, list_rows
from ferlab.data.sources.rafdb import LABEL_FILE, parse_partition
from ferlab.errors import FerlabError
from ferlab.infer.prepare import Item
from ferlab.labels import AFFECTNET, RAFDB

FORMATS = ("detect", "rafdb", "affectnet")
EYES_68 = (slice(36, 42), slice(42, 48))  # the eye on the image's left (the subject's right), then the other
NOSE_68, MOUTH_68 = 30, (48, 54)


def five_from_68(points: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG landmarks -> (5, 2) in the template's order (eye centres, nose tip, mouth corners)."""
    eyes = [points[s].mean(0) for s in EYES_68]
    return np.stack([*eyes, points[NOSE_68], points[MOUTH_68[0]], points[MOUTH_68[1]]])


def parse_rafdb_landmarks(path: Path) -> np.ndarray:
    """The five (x, y) lines of a RAF-DB `_manu_attri.txt`; anything else is one line naming the file."""
    try:
        lines = [ln.split() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise FerlabError(f"{path}: cannot read the landmark file ({e})") from None
    try:
        points = np.array([[float(v) for v in ln] for ln in lines[:5]], dtype=np.float64)
    except ValueError:
        points = np.zeros(0)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise FerlabError(f"{path}: expected five lines 'x y' (eye centres, nose tip, mouth corners) first, found "
                          f"{[' '.join(ln) for ln in lines[:5]]}"[:300])
    return points


def parse_68(values: list[str] | np.ndarray, where: str) -> np.ndarray:
    """136 numbers x, y, ... -> (68, 2); anything else is one line naming `where`."""
    try:
        flat = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        flat = np.zeros(0)
    if flat.size != 136 or not np.isfinite(flat).all():
        raise FerlabError(f"{where}: expected 68 landmarks (136 numbers x, y, ...), found {flat.size} numbers")
    return flat.reshape(68, 2)


def rafdb_items(root: Path) -> list[Item]:
    """RAF-DB's original photos with their manual landmarks; out: <train|test>/<class>/<stem>.jpg."""
    basic = next((b for b in (root / "basic", root) if (b / LABEL_FILE).is_file()), None)
    if basic is None:
        raise FerlabError(f"RAF-DB not found under {root}: expected basic/{LABEL_FILE.as_posix()} (the release)")
    items = []
    for name, label, split, _ in parse_partition(basic / LABEL_FILE):
        stem = name.rsplit(".", 1)[0]
        marks = basic / "Annotation" / "manual" / f"{stem}_manu_attri.txt"
        items.append(Item(basic / "Image" / "original" / name, Path(split) / RAFDB[label] / f"{stem}.jpg",
                          parse_rafdb_landmarks(marks), str(marks)))
    return items


def _affectnet_release(root: Path) -> list[Item]:
    images = next((root / d for d in ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
                   if (root / d).is_dir()), root / "Manually_Annotated_Images")
    items = []
    for list_name, split in LISTS.items():
        path = root / "Manually_Annotated_file_lists" / list_name
        for fields, index, where in list_rows(path):
            if "facial_landmarks" not in index:
                raise FerlabError(f"{path}: no facial_landmarks column; found {[c for c in index if c != 'fields']}")
            expression = expression_id(fields[index["expression"]], where)
            if expression >= len(AFFECTNET):  # none / uncertain / non-face: not a class
                continue
            sub = fields[index["subDirectory_filePath"]].strip()
            marks = parse_68(fields[index["facial_landmarks"]].split(";"), f"{where} (facial_landmarks)")
            out = Path(split) / AFFECTNET[expression] / sub.replace("/", "_")
            items.append(Item(images / sub, out, five_from_68(marks), where))
    return items


def _affectnet_2021(root: Path) -> list[Item]:
    items = []
    for folder, split in SETS_2021.items():
        for note in sorted((root / folder / "annotations").glob("*_exp.npy")):
            n = note.name[: -len("_exp.npy")]
            expression = expression_id(_npy_value(note), str(note))
            if expression >= len(AFFECTNET):
                continue
            lnd = note.with_name(f"{n}_lnd.npy")
            try:
                values = np.load(lnd, allow_pickle=False).ravel()
            except (OSError, ValueError, EOFError) as e:
                raise FerlabError(f"{lnd}: not a readable .npy landmark file ({e})") from None
            image = root / folder / "images" / f"{n}.jpg"
            items.append(Item(image, Path(split) / AFFECTNET[expression] / image.name,
                              five_from_68(parse_68(values, str(lnd))), str(lnd)))
    return items


def affectnet_items(root: Path) -> list[Item]:
    """AffectNet's faces with their 68 landmarks as five points (ids 8-10 left out); either layout."""
    if (root / "Manually_Annotated_file_lists").is_dir():
        return _affectnet_release(root)
    if all((root / s).is_dir() for s in SETS_2021):
        return _affectnet_2021(root)
    raise FerlabError(f"AffectNet not found under {root}: expected Manually_Annotated_file_lists/ or train_set/ "
                      "and val_set/")


LISTERS = {"rafdb": rafdb_items, "affectnet": affectnet_items}
