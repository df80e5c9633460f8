"""FER2013 training input pipeline with augment=report001: ferlab's against the way reports 001-003 wrote theirs.

Both read the same generated 35,887-row fer2013.csv (28,709 Training rows) in one run and deliver normalized
float batches of 64 augmented training images (p=0.5 pad 2 + random crop 48, brightness and contrast x0.5-1.5,
horizontal flip), one process and one thread each (no DataLoader workers, torch.set_num_threads(1)).

- ferlab: the CSV parsed once into a cached uint8 tensor; batches sliced by index; augmentation drawn per image
  on the whole batch (`FERDataModule.transform`, what `on_after_batch_transfer` runs on the training device).
- reference: `pandas.read_csv`, then per item `df.pixels.iloc[i].split()` -> numpy -> PIL image ->
  torchvision transforms (RandomApply(RandomCrop(48, padding=2)), ColorJitter, RandomHorizontalFlip, ToTensor,
  Normalize) -> DataLoader collate.

Images/s over one epoch of the Training rows (--quick: 3,000 rows); also the first parse and the cached load
of the CSV. Target: ferlab at least 20x the reference.

    .venv/bin/python -m benchmarks.data_pipeline [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import cli, compose_train, machine, table

ROWS, QUICK_ROWS = 35_887, 3_000
KAGGLE_SHARE = 3_589 / 35_887  # PublicTest and PrivateTest each
BATCH = 64
TARGET = 20.0


def make_csv(folder: Path, rows: int) -> Path:
    """A FER2013-format CSV of synthetic faces with Kaggle's Training/PublicTest/PrivateTest proportions."""
    from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv

    spec = SynthSpec(num_images=rows, seed=0, val_fraction=KAGGLE_SHARE, test_fraction=KAGGLE_SHARE)
    return write_fer2013_csv(folder / "fer2013.csv", *make_dataset(spec))


def _report001_augment(folder: Path) -> Any:
    """augment=report001 composed as `ferlab train` composes it (the option builds on augment/none.yaml)."""
    from hydra.utils import instantiate

    return instantiate(compose_train(folder, ["augment=report001"], folder / "run").augment)


def _rate(batches: Any, step: Any) -> tuple[float, int]:
    """Images per second delivered by `step(batch)` over every batch after the first (a warm-up)."""
    it = iter(batches)
    step(next(it))
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(step(batch))
    return n / (time.perf_counter() - start), n


def measure_ferlab(csv: Path, cache: Path) -> dict[str, float]:
    """First parse, cached load, and training images/s of ferlab's pipeline."""
    from ferlab.data.cache import load_or_build
    from ferlab.data.datamodule import FERDataModule
    from ferlab.data.sources.fer2013 import Fer2013Csv
    from ferlab.labels import FER2013

    start = time.perf_counter()
    load_or_build(Fer2013Csv(str(csv)), cache)
    parse = time.perf_counter() - start
    start = time.perf_counter()
    load_or_build(Fer2013Csv(str(csv)), cache)
    cached = time.perf_counter() - start
    dm = FERDataModule(Fer2013Csv(str(csv)), name="fer2013", num_classes=7, class_names=FER2013, in_chans=1,
                       image_size=48, batch_size=BATCH, cache_dir=str(cache), augment=_report001_augment(csv.parent))
    dm.setup("fit")
    rate, n = _rate(dm.train_dataloader(), lambda b: dm.transform(b[0], train=True))
    return {"parse_s": parse, "cached_s": cached, "rate": rate, "images": n}


def measure_reference(csv: Path) -> dict[str, float]:
    """pandas + per-item split + PIL + torchvision transforms + DataLoader, as the reports wrote it."""
    import numpy as np
    import pandas as pd
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    start = time.perf_counter()
    df = pd.read_csv(csv)
    parse = time.perf_counter() - start
    train = df[df["Usage"] == "Training"].reset_index(drop=True)
    tf = transforms.Compose([
        transforms.RandomApply([transforms.RandomCrop(48, padding=2)], p=0.5),
        transforms.ColorJitter(brightness=(0.5, 1.5), contrast=(0.5, 1.5)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.5,), (0.25,)),
    ])

    class Fer2013Dataset(Dataset):
        def __len__(self) -> int:
            return len(train)

        def __getitem__(self, i: int):
            pixels = np.array(train["pixels"].iloc[i].split(), dtype=np.uint8).reshape(48, 48)
            return tf(Image.fromarray(pixels)), int(train["emotion"].iloc[i])

    loader = DataLoader(Fer2013Dataset(), batch_size=BATCH, shuffle=True, num_workers=0)
    rate, n = _rate(loader, lambda b: b[0])
    return {"parse_s": parse, "rate": rate, "images": n}


def to_markdown(ours: dict[str, float], ref: dict[str, float], rows: int, quick: bool) -> str:
    """The results table plus how it was measured."""
    ratio = ours["rate"] / ref["rate"]
    body = [
        ["ferlab (cached uint8 tensor, batched per-image augmentation)", f"{ours['rate']:,.0f}", f"{ratio:.1f}x",
         f"{ours['parse_s']:.2f} s", f"{ours['cached_s']:.3f} s"],
        ["reference (pandas, per-item split, PIL, torchvision, DataLoader)", f"{ref['rate']:,.0f}", "1.0x",
         f"{ref['parse_s']:.2f} s (pd.read_csv)", "-"],
    ]
    verdict = "met" if ratio >= TARGET else "NOT met"
    return "\n".join([
        f"### FER2013 training input pipeline, augment=report001{' (--quick)' if quick else ''}",
        "",
        f"{rows:,}-row fer2013.csv ({ours['images']:,} timed training images each), batch {BATCH}, one process, "
        "one thread. "
        f"Machine: {machine()}.",
        "",
        table(["pipeline", "train images/s", "vs reference", "first parse", "cached load"], body,
              right=range(1, 5)),
        "",
        f"Target >= {TARGET:.0f}x: {verdict} ({ratio:.1f}x). \"first parse\": CSV to uint8 arrays (ferlab: "
        "vectorized, then cached); \"cached load\": the second run's load of the cache.",
    ]) + "\n"


def main(quick: bool = False) -> str:
    """Generate the CSV in a temporary folder, measure both pipelines, return the markdown."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # a like-for-like single core: the reference transforms one image at a time
    rows = QUICK_ROWS if quick else ROWS
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-") as tmp:
        csv = make_csv(Path(tmp), rows)
        ours = measure_ferlab(csv, Path(tmp) / "cache")
        ref = measure_reference(csv)
    return to_markdown(ours, ref, rows, quick)


if __name__ == "__main__":
    cli("data_pipeline", main, __doc__.splitlines()[0])
