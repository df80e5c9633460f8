"""AffectNet, manually annotated: the original release's CSV lists and the March 2021 per-image annotations.

Release: `Manually_Annotated_file_lists/training.csv` and `validation.csv` (columns `subDirectory_filePath,face_x,
face_y,face_width,face_height,facial_landmarks,expression,valence,arousal`; a file without the header line is read
by position) and the images under `Manually_Annotated_Images/<subDirectory_filePath>` (also found one level down in
`Manually_Annotated/`), each cropped to its face box, clamped to the image. 2021: `train_set/images/<n>.jpg` with
`train_set/annotations/<n>_exp.npy`, `<n>_val.npy` and `<n>_aro.npy` (already cropped faces), `val_set/` the same.

Valence and arousal (in [-1, 1]) become `FERData.va`, NaN where the value is -2 (AffectNet's "not annotated": the
uncertain and non-face rows) or, in the 2021 layout, where an image has no `_val.npy`/`_aro.npy`; any other value
outside [-1, 1] is refused with its file and line.

Expression ids 0..7 are the classes of ferlab.labels.AFFECTNET; 8 (none), 9 (uncertain) and 10 (non-face) rows
are dropped and counted, and so are rows with a box of negative (or zero) width or height. The validation list is
the test split (the test set proper is not public); validation is carved from training.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ferlab.data.images import DEFAULT_MAX_PIXELS, is_image_file
from ferlab.data.sources.base import require_path
from ferlab.data.sources.listed import ListedImages, Listing
from ferlab.data.sources.registry import register_source
from ferlab.errors import FerlabError
from ferlab.labels import AFFECTNET, AFFECTNET_NOT_CLASSES

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
BOX = COLUMNS[1:5]
LISTS = {"training.csv": "train", "validation.csv": "test"}
IMAGE_DIRS = (Path("Manually_Annotated_Images"), Path("Manually_Annotated") / "Manually_Annotated_Images")
SETS_2021 = {"train_set": "train", "val_set": "test"}
CLASSES = (7, 8)
MAX_ID = max(AFFECTNET_NOT_CLASSES)
WHERE = "AffectNet comes from its authors on request (mohammadmahoor.com/affectnet)"
VA = ("valence", "arousal")
NOT_ANNOTATED = -2.0  # AffectNet's valence/arousal of an image without them


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _number(value: str, column: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FerlabError(f"{where}: {column} {value.strip()!r} is not a number") from None


def expression_id(value: object, where: str) -> int:
    """An expression id 0..10 from a CSV field or a 2021 annotation's value; anything else names `where`."""
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if not number.is_integer() or not 0 <= number <= MAX_ID:
        raise FerlabError(f"{where}: unknown expression id {str(value).strip()!r}; expected 0-7 "
                          f"({', '.join(AFFECTNET)}) or 8-10 ({', '.join(AFFECTNET_NOT_CLASSES.values())})")
    return int(number)


def va_value(value: object, name: str, where: str) -> float:
    """A valence or arousal value in [-1, 1], NaN for -2 (not annotated); anything else names `where`."""
    number = _number(str(value), name, where)
    if number == NOT_ANNOTATED:
        return float("nan")
    if not -1.0 <= number <= 1.0:
        raise FerlabError(f"{where}: {name} {str(value).strip()!r} is outside [-1, 1] (-2: not annotated)")
    return number


Row = tuple[str, tuple[int, int, int, int], int, tuple[float, float], str]


def read_list(path: Path) -> list[Row]:
    """(image sub-path, face box, expression id, (valence, arousal), `file:line`) of every row of an AffectNet
    CSV list; (NaN, NaN) where the list has no VA columns.

    The header line is detected (a first row naming the `expression` column), not assumed; without it the
    columns are taken in the release's order.
    """
    rows = []
    for fields, index, where in list_rows(path):
        if len(fields) != index["fields"]:
            raise FerlabError(f"{where}: expected {index['fields']} fields, found {len(fields)}")
        box = tuple(round(_number(fields[index[c]], c, where)) for c in BOX)
        va = tuple(va_value(fields[index[c]], c, where) if c in index else float("nan") for c in VA)
        rows.append((fields[index[COLUMNS[0]]].strip(), box, expression_id(fields[index["expression"]], where),
                     va, where))
    return rows


def list_rows(path: Path) -> Iterator[tuple[list[str], dict[str, int], str]]:
    """(fields, column positions, `file:line`) of each data row of an AffectNet CSV list: blank lines and the
    header (detected from its `expression` column, not assumed) left out."""
    index = None
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        for fields in reader:
            where = f"{path}:{reader.line_num}"
            if not any(s.strip() for s in fields):
                continue
            if index is None:
                index = _columns(fields, where)
                if "expression" in (s.strip() for s in fields):
                    continue
            yield fields, index, where


def _columns(first: list[str], where: str) -> dict[str, int]:
    """Column positions from the header row, or the release's order when the first row is data."""
    names = [s.strip() for s in first]
    if "expression" not in names:
        if len(names) > 1 and not _is_number(names[1]):
            raise FerlabError(f"{where}: neither AffectNet's header ({','.join(COLUMNS)}) nor a data row: {names[:3]}")
        return {**{c: i for i, c in enumerate(COLUMNS)}, "fields": len(COLUMNS)}
    missing = [c for c in (COLUMNS[0], *BOX, "expression") if c not in names]
    if missing:
        raise FerlabError(f"{where}: missing column(s) {missing}; expected {list(COLUMNS)}, found {names}")
    return {**{c: names.index(c) for c in names}, "fields": len(names)}


@register_source
class AffectNet(ListedImages):
    """AffectNet's manually annotated images in either layout (found by looking under `root`).

    Args:
        root: the folder holding `Manually_Annotated_file_lists/` and the images, or `train_set/` and `val_set/`.
        classes: 8 (with contempt) | 7 (contempt rows dropped too). A decode setting: each has its own cache.
        image_size, channels, on_bad_sample, max_pixels: as for every decoded source (`ListedImages`).
    """

    provides_va = True  # FERData.va: valence/arousal targets (head=va|expr_va)

    def __init__(self, root: str, classes: int = 8, image_size: int = 224, channels: int = 3,
                 on_bad_sample: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(root, image_size, channels, on_bad_sample, max_pixels)
        if classes not in CLASSES:
            raise FerlabError(f"data.source.classes: expected 8 (with contempt) or 7 (without), got {classes!r}")
        self.classes = int(classes)

    def layout(self) -> str:
        """"release" (CSV lists) or "2021" (train_set/ and val_set/)."""
        require_path(self.root, "AffectNet folder", f"{WHERE}; pass data.source.root=...", folder=True)
        if (self.root / "Manually_Annotated_file_lists").is_dir():
            return "release"
        if all((self.root / s).is_dir() for s in SETS_2021):
            return "2021"
        raise FerlabError(f"AffectNet not found under {self.root}: expected Manually_Annotated_file_lists/ (the "
                          f"release) or train_set/ and val_set/ (the March 2021 layout); {WHERE}")

    def files(self) -> list[Path]:
        """The two CSV lists, or the 2021 layout's four folders (a folder changes when a file comes or goes)."""
        if self.layout() == "release":
            lists = self.root / "Manually_Annotated_file_lists"
            return [require_path(lists / name, "AffectNet list", WHERE) for name in LISTS]
        return [require_path(self.root / s / d, f"AffectNet {s}/{d}", WHERE, folder=True)
                for s in SETS_2021 for d in ("images", "annotations")]

    def settings(self) -> dict:
        return {"format": "affectnet", "classes": self.classes, "targets": ["expression", *VA],
                **self.decode_settings()}

    def prepare(self) -> None:
        self.files()

    def read(self):
        release = self.layout() == "release"
        listing = self._list_release() if release else self._list_2021()
        meta = {"layout": "AffectNet release (CSV lists)" if release else "AffectNet 2021", "root": str(self.root),
                "classes": self.classes}
        data = self.decode(listing, meta)
        data.meta["va_annotated"] = int(np.isfinite(data.va).all(1).sum())  # rows with valence and arousal
        return data

    def _keep(self, listing: Listing, expression: int) -> bool:
        """Whether a row of this id is a class here; the others are counted by name."""
        if expression in AFFECTNET_NOT_CLASSES:
            listing.drop(AFFECTNET_NOT_CLASSES[expression])
        elif expression >= self.classes:
            listing.drop(AFFECTNET[expression])
        return expression < self.classes

    def _image_dir(self) -> Path:
        for sub in IMAGE_DIRS:
            if (self.root / sub).is_dir():
                return self.root / sub
        raise FerlabError(f"AffectNet images not found: expected {' or '.join(str(self.root / d) for d in IMAGE_DIRS)}")

    def _list_release(self) -> Listing:
        images, listing = self._image_dir(), Listing(boxes=[], va=[])
        for path in self.files():
            for sub, box, expression, va, where in read_list(path):
                if not self._keep(listing, expression):
                    continue
                if box[2] <= 0 or box[3] <= 0:
                    listing.drop("invalid_box")
                    continue
                listing.add(images / sub, expression, LISTS[path.name], where, box, va)
        return listing

    def _list_2021(self) -> Listing:
        listing = Listing(va=[])
        for folder, split in SETS_2021.items():
            images = {p.stem: p for p in (self.root / folder / "images").iterdir() if is_image_file(p)}
            notes = sorted((self.root / folder / "annotations").glob("*_exp.npy"), key=_numeric)
            for note in notes:
                expression = expression_id(_npy_value(note), str(note))
                n = note.name[: -len("_exp.npy")]
                if self._keep(listing, expression):
                    listing.add(images.get(n, note.parent.parent / "images" / f"{n}.jpg"), expression, split, str(note),
                                va=_va_2021(note.parent, n))
            labelled = {note.name[: -len("_exp.npy")] for note in notes}
            unlabelled = sum(1 for n in images if n not in labelled)
            if unlabelled:  # an image without an annotation has no label: left out, counted
                listing.drop(f"{folder}_unlabelled_images", unlabelled)
        return listing


def _numeric(path: Path) -> tuple[int, str]:
    """Sort key: <n>_exp.npy by n as a number."""
    stem = path.name.split("_", 1)[0]
    return (int(stem), "") if stem.isdigit() else (1 << 62, path.name)


def _va_2021(folder: Path, n: str) -> tuple[float, float]:
    """(valence, arousal) of image `n` from `<n>_val.npy` and `<n>_aro.npy`; NaN where a file is absent."""
    return tuple(va_value(_npy_value(path, name), name, str(path)) if path.is_file() else float("nan")
                 for name, path in zip(VA, (folder / f"{n}_val.npy", folder / f"{n}_aro.npy"), strict=True))


def _npy_value(path: Path, what: str = "expression id") -> object:
    """The one value of a 2021 annotation file (a numpy string like '3' or '-0.176846', or a number)."""
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise FerlabError(f"{path}: not a readable .npy annotation ({e})") from None
    if value.size != 1:
        raise FerlabError(f"{path}: expected one {what}, found an array of shape {value.shape}")
    return value.item()
