"""The synthetic faces as a source: rendered into a FER2013 CSV on first use, then read by the real reader."""

from __future__ import annotations

import logging
from pathlib import Path

from ferlab.data.sources.fer2013 import Fer2013Csv
from ferlab.data.sources.registry import register_source
from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv

log = logging.getLogger(__name__)


@register_source
class SyntheticFer2013(Fer2013Csv):
    """`csv_path` is written once (atomically) from the spec; training then parses it like Kaggle's file.

    `val_fraction` / `test_fraction` are the PublicTest / PrivateTest shares; `test` as for Fer2013Csv.
    """

    def __init__(
        self,
        csv_path: str,
        num_images: int = 12000,
        seed: int = 0,
        difficulty: float = 0.5,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        test: str = "private",
        test_csv_path: str | None = None,
    ) -> None:
        super().__init__(csv_path, test_csv_path=test_csv_path, test=test)
        self.spec = SynthSpec(num_images, seed, difficulty, val_fraction, test_fraction)

    def prepare(self) -> None:
        if not self.csv_path.is_file():
            log.info("rendering %d synthetic faces into %s", self.spec.num_images, self.csv_path)
            write_fer2013_csv(self.csv_path, *make_dataset(self.spec))

    def files(self) -> list[Path]:
        """The CSV (and test CSV) it reads; listing them makes nothing: `prepare()` renders a missing CSV (the
        datamodule's prepare_data calls it first), and a config read back from a checkpoint never does."""
        return super().files()
