"""RAF-DB basic (Real-world Affective Faces): the authors' release and the common `DATASET/` re-upload.

Release: `basic/EmoLabel/list_patition_label.txt` (lines `train_00001.jpg 5`, no header; the misspelling is the
release's own) with `basic/Image/aligned/<stem>_aligned.jpg` (100x100 aligned faces) or
`basic/Image/original/<name>` (the uncropped photos); the split is the name's prefix (`train_` / `test_`).
Re-upload: `DATASET/{train,test}/{1..7}/*.jpg`, with optional `train_labels.csv` / `test_labels.csv`
(`image,label`) beside `DATASET/`, which must agree with the folders. Labels 1..7 (ferlab.labels.RAFDB order)
become 0..6.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ferlab.data.images import DEFAULT_MAX_PIXELS
from ferlab.data.sources.base import check_choice, require_path
from ferlab.data.sources.csvfile import parse_ints, read_table, read_text
from ferlab.data.sources.folders import list_images
from ferlab.data.sources.listed import ListedImages, Listing
from ferlab.data.sources.registry import register_source
from ferlab.errors import FerlabError
from ferlab.labels import RAFDB

log = logging.getLogger(__name__)

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
IMAGES = ("aligned", "original")
SPLIT_NAMES = ("train", "test")  # name prefix / folder -> split
IDS = tuple(str(i) for i in range(1, len(RAFDB) + 1))  # the file's labels and the re-upload's class folders
WHERE = "RAF-DB comes from its authors on request (whdeng.cn/RAF)"


def parse_partition(path: Path) -> list[tuple[str, int, str, str]]:
    """(image name, label 0..6, split, `file:line`) of every line of list_patition_label.txt."""
    rows, seen = [], {}
    for n, raw in enumerate(read_text(path).split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise FerlabError(f"{path}:{n}: expected '<image name> <label 1-7>', found {line!r}")
        name, label = parts
        if label not in IDS:
            raise FerlabError(f"{path}:{n}: unknown label {label!r}; expected 1-7 ({', '.join(RAFDB)})")
        split = name.split("_", 1)[0]
        if split not in SPLIT_NAMES:
            raise FerlabError(f"{path}:{n}: image name {name!r} starts with neither train_ nor test_")
        if name in seen:
            raise FerlabError(f"{path}:{n}: image {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = n
        rows.append((name, int(label) - 1, split, f"{path}:{n}"))
    if not rows:
        raise FerlabError(f"{path}: no label lines")
    return rows


def class_folders(split_dir: Path) -> list[Path]:
    """The re-upload's class folders 1..7 of one split, in label order; others or missing ones are an error."""
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if found != sorted(IDS):
        raise FerlabError(f"{split_dir}: expected the class folders {list(IDS)} ({', '.join(RAFDB)}), found {found}")
    return [split_dir / i for i in IDS]


@register_source
class RafDb(ListedImages):
    """RAF-DB basic, 7 classes, in either layout (found by looking under `root`).

    Args:
        root: the folder holding `basic/` (or `basic/` itself), or the one holding `DATASET/`.
        images: aligned (the release's 100x100 aligned faces; default) | original (the uncropped photos, release
            layout only).
        image_size, channels, on_bad_sample, max_pixels: as for every decoded source (`ListedImages`).
    """

    def __init__(self, root: str, images: str = "aligned", image_size: int = 224, channels: int = 3,
                 on_bad_sample: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(root, image_size, channels, on_bad_sample, max_pixels)
        self.images = check_choice("data.source.images", images, IMAGES)
        self._walked: tuple[Listing, dict] | None = None  # the re-upload's tree, walked once per reader

    def layout(self) -> tuple[str, Path]:
        """("release", the basic/ folder) or ("folders", the DATASET/ folder)."""
        require_path(self.root, "RAF-DB folder", f"{WHERE}; pass data.source.root=...", folder=True)
        for basic in (self.root / "basic", self.root):
            if (basic / LABEL_FILE).is_file():
                return "release", basic
        for dataset in (self.root / "DATASET", self.root):
            if all((dataset / s).is_dir() for s in SPLIT_NAMES):
                if self.images != "aligned":
                    raise FerlabError(f"{dataset}: the DATASET/ re-upload holds the aligned faces only; "
                                      "data.source.images=original needs the release's basic/Image/original/")
                return "folders", dataset
        raise FerlabError(f"RAF-DB not found under {self.root}: expected basic/{LABEL_FILE.as_posix()} (the release) "
                          f"or DATASET/train/1..7/ and DATASET/test/1..7/ (the re-upload); {WHERE}")

    def files(self) -> list[Path]:
        """The label list (the release: its lines say which images there are), or every image and label CSV."""
        kind, folder = self.layout()
        if kind == "release":
            return [folder / LABEL_FILE]
        listing, _ = self._list_folders(folder)
        return [*listing.paths, *(self._csv(folder, s) for s in SPLIT_NAMES if self._csv(folder, s).is_file())]

    def settings(self) -> dict:
        return {"format": "rafdb", "images": self.images, **self.decode_settings()}

    def prepare(self) -> None:
        self.files()

    def read(self):
        kind, folder = self.layout()
        listing, meta = self._list_release(folder) if kind == "release" else self._list_folders(folder)
        return self.decode(listing, meta)

    def _list_release(self, basic: Path) -> tuple[Listing, dict]:
        image_dir = require_path(basic / "Image" / self.images, f"RAF-DB {self.images} images",
                                 "data.source.images=aligned|original", folder=True)
        listing = Listing()
        for name, label, split, where in parse_partition(basic / LABEL_FILE):
            stem = name.rsplit(".", 1)[0]
            listing.add(image_dir / (f"{stem}_aligned.jpg" if self.images == "aligned" else name), label, split, where)
        return listing, {"layout": f"RAF-DB release ({self.images})", "root": str(self.root)}

    @staticmethod
    def _csv(dataset: Path, split: str) -> Path:
        return dataset.parent / f"{split}_labels.csv"

    def _list_folders(self, dataset: Path) -> tuple[Listing, dict]:
        """Every image of the re-upload with its label and split (files(), prepare() and read() share one walk)."""
        if self._walked is None:
            self._walked = self._walk_folders(dataset)
        return self._walked

    def _walk_folders(self, dataset: Path) -> tuple[Listing, dict]:
        listing, unlisted = Listing(), 0
        for split in SPLIT_NAMES:
            by_name = {}
            for label, folder in enumerate(class_folders(dataset / split)):
                for path in list_images(folder)[0]:
                    listing.add(path, label, split, str(path))
                    by_name[path.name] = label
            if self._csv(dataset, split).is_file():
                unlisted += self._check_csv(self._csv(dataset, split), dataset / split, by_name, listing)
        meta = {"layout": "RAF-DB DATASET/ re-upload", "root": str(self.root), "unlisted_images": unlisted}
        return listing, meta

    def _check_csv(self, path: Path, split_dir: Path, by_name: dict[str, int], listing: Listing) -> int:
        """The CSV's labels must match the folders; returns how many images it does not list."""
        table = read_table(path, ("image", "label"))
        labels = parse_ints(table, "label", "label", 1, len(RAFDB))
        for row, (name, label) in enumerate(zip(table.cols["image"], labels.tolist(), strict=True)):
            name = name.strip()
            if name not in by_name:
                if self.on_bad_sample == "error":
                    raise FerlabError(f"{table.where(row)}: image {name!r} not found in {split_dir}/1..7/")
                listing.drop("missing_image")
            elif by_name[name] != label - 1:
                raise FerlabError(f"{table.where(row)}: {name} is labelled {label} here but lies in "
                                  f"{split_dir.name}/{by_name[name] + 1}/")
        listed = {n.strip() for n in table.cols["image"]}
        unlisted = sum(1 for n in by_name if n not in listed)
        if unlisted:
            log.warning("%s does not list %d image(s) of %s; their folder gives their label", path, unlisted, split_dir)
        return unlisted
