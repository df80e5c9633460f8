"""The one LightningDataModule: decoded uint8 tensors in memory, batches by index, GPU-side augmentation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from ferlab.data.augment import BatchAugment
from ferlab.data.cache import load_or_build
from ferlab.data.sources.base import SPLITS, FERData, Source
from ferlab.errors import FerlabError

log = logging.getLogger(__name__)


class BatchTensorDataset(Dataset):
    """Images uint8 (N,C,H,W) and targets; `__getitems__` slices a whole batch with one index op."""

    def __init__(self, images: Tensor, targets: Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.targets[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        return self.images[idx], self.targets[idx]


def collate_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The dataset already returns a batch; module-level so worker processes can pickle it."""
    return batch


def stratified_val(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, per-class `fraction` of positions (into `targets`) to move to validation."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        picks.append(rng.permutation(members)[: round(len(members) * fraction)])
    return np.sort(np.concatenate(picks))


class FERDataModule(pl.LightningDataModule):
    """Splits of a decoded source as in-memory batches.

    Args:
        source: a reader from `ferlab.data.sources` (or the synthetic writer), built by Hydra.
        name, num_classes, class_names, in_chans, image_size: what the model sees; images are converted
            (channels, size) on the device, so a 48x48 grayscale set can feed an RGB 224x224 model.
        mean, std: per-channel normalization in [0, 1] units, or "auto" to measure them on the train split.
        sampler: "random" or "balanced" (WeightedRandomSampler, weight 1/count of the image's class).
        val_fraction: carve a stratified, seeded validation split out of train (None: the source's own).
        test_splits: metric prefix -> split name, e.g. {test: test}.
    """

    def __init__(
        self,
        source: Source,
        *,
        name: str,
        num_classes: int,
        class_names: Sequence[str],
        in_chans: int,
        image_size: int,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        sampler: str = "random",
        mean: Sequence[float] | str = (0.5,),
        std: Sequence[float] | str = (0.25,),
        val_fraction: float | None = None,
        test_splits: dict[str, str] | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        augment: BatchAugment | None = None,
    ) -> None:
        super().__init__()
        if sampler not in ("random", "balanced"):
            raise FerlabError(f"data.sampler: expected random or balanced, got {sampler!r}")
        if len(class_names) != num_classes:
            raise FerlabError(f"data.class_names has {len(class_names)} names but data.num_classes is {num_classes}")
        self.source, self.name = source, name
        self.num_classes, self.class_names = num_classes, list(class_names)
        self.in_chans, self.image_size = in_chans, image_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.sampler, self.seed = num_workers, sampler, seed
        self.mean_cfg, self.std_cfg = mean, std
        self.val_fraction, self.cache_dir = val_fraction, cache_dir
        self.test_splits = dict(test_splits or {"test": "test"})
        self.augment = augment or BatchAugment()
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.meta: dict = {}

    def prepare_data(self) -> None:
        self.source.prepare()
        load_or_build(self.source, self.cache_dir)  # decode once, on one process

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = load_or_build(self.source, self.cache_dir)
        self._check(data)
        self.meta = dict(data.meta)
        split = data.split.copy()
        if self.val_fraction:
            train = data.indices("train")
            split[train[stratified_val(data.targets[train], self.val_fraction, self.seed)]] = SPLITS.index("val")
        for i, name in enumerate(SPLITS):
            idx = np.flatnonzero(split == i)
            if len(idx):
                self.splits[name] = (torch.from_numpy(data.images[idx]), torch.from_numpy(data.targets[idx]))
        for name in ["train", "val", *self.test_splits.values()]:
            if name not in self.splits:
                raise FerlabError(f"data {self.name!r}: the {name!r} split is empty (splits found: {list(self.splits)})")
        self._set_normalization()
        log.info("data %s: %s", self.name, self.sizes)

    def _check(self, data: FERData) -> None:
        channels = data.images.shape[1]
        if channels not in (1, 3):
            raise FerlabError(f"data {self.name!r}: images have {channels} channels; expected 1 or 3")
        if len(data.targets) and int(data.targets.max()) >= self.num_classes:
            raise FerlabError(f"data {self.name!r}: label {int(data.targets.max())} but num_classes={self.num_classes}")

    def _set_normalization(self) -> None:
        if self.mean_cfg == "auto" or self.std_cfg == "auto":
            x = self._to_model_space(self.splits["train"][0][:20000].float() / 255)
            mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
        else:
            mean, std = torch.tensor(list(self.mean_cfg)), torch.tensor(list(self.std_cfg))
        if len(mean) == 1 and self.in_chans == 3:
            mean, std = mean.repeat(3), std.repeat(3)
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise FerlabError(f"data.mean/data.std need {self.in_chans} values, got {mean.tolist()} / {std.tolist()}")
        if (std <= 0).any():
            raise FerlabError(f"data.std must be positive, got {std.tolist()}")
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    @property
    def sizes(self) -> dict[str, int]:
        """Images per split."""
        return {name: len(t[1]) for name, t in self.splits.items()}

    @property
    def class_counts(self) -> Tensor:
        """(K,) training images per class."""
        return torch.bincount(self.splits["train"][1], minlength=self.num_classes)

    def _loader(self, name: str, train: bool) -> DataLoader:
        images, targets = self.splits[name]
        dataset = BatchTensorDataset(images, targets)
        sampler = None
        if train and self.sampler == "balanced":
            weights = 1.0 / self.class_counts.clamp(min=1).double()
            sampler = WeightedRandomSampler(weights[targets], num_samples=len(targets), replacement=True)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(split, train=False) for split in self.test_splits.values()]

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def _to_model_space(self, x: Tensor) -> Tensor:
        """Float (B,C0,H0,W0) in [0, 1] to the model's channels and size."""
        if x.shape[1] != self.in_chans:
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, True)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        return x

    def transform(self, x: Tensor, train: bool) -> Tensor:
        """uint8 (B,C0,H0,W0) on any device -> normalized float (B,in_chans,S,S): augment, convert, normalize."""
        x = x.float().div_(255)
        if train:
            x = self.augment(x)
        x = self._to_model_space(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        x, y = batch
        training = self.trainer is not None and self.trainer.training
        return self.transform(x, train=training), y
