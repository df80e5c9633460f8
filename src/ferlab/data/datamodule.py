"""The one LightningDataModule: decoded uint8 images memory-mapped from the cache, batches gathered by index,
GPU-side augmentation.

Splits are row indices into the one mapped array (`ImageSet`); nothing here copies the whole set into memory:
cleaning reads the per-row digests and standard deviations stored with the cache, "auto" normalization reads a
seeded sample in chunks, and each batch gathers only its own rows.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ferlab.data.augment import BatchAugment, random_crop
from ferlab.data.balance import inverse_frequency_weights
from ferlab.data.cache import load_or_build
from ferlab.data.clean import Cleaning, clean_train
from ferlab.data.imageset import ImageSet
from ferlab.data.resumable import EpochRandomSampler, EpochWeightedSampler, ResumableLoader
from ferlab.data.sources.base import SPLITS, TRAIN_TARGETS, FERData, Source, check_choice
from ferlab.data.splits import assign_splits, resolve_policy
from ferlab.errors import FerlabError

log = logging.getLogger(__name__)
AUTO_NORM_IMAGES = 10_000  # train images measured for mean/std "auto"
AUTO_NORM_CHUNK_BYTES = 32 << 20  # uint8 bytes gathered per step of that measurement


class BatchTensorDataset(Dataset):
    """Images uint8 (N,C,H,W) (an `ImageSet` or a tensor) and targets; `__getitems__` gathers a whole batch with
    one index op. Pickled into DataLoader workers, an ImageSet travels as its file's path (no copy).

    `kind` says what a batch's targets are: "index" int64 (B,); "distribution" and "sample" float (B,K) rows of
    `soft` (for "sample" the datamodule draws a class from each row after the batch reached the training
    process: a loader worker's random stream is not what a resume restores). With `va` (N, 2) a batch carries
    its (B, 2) valence/arousal rows after its targets; `with_index`: a batch also carries its rows in this dataset
    (int64 (B,), last), for methods that keep per-image state (SCN's relabeling).
    """

    def __init__(self, images: ImageSet | Tensor, targets: Tensor, soft: Tensor | None = None,
                 kind: str = "index", with_index: bool = False, va: Tensor | None = None) -> None:
        if kind != "index" and soft is None:
            raise ValueError(f"targets of kind {kind!r} need soft targets")
        self.images, self.targets, self.soft, self.kind, self.va = images, targets, soft, kind, va
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return tuple(part[0] for part in self.__getitems__([i]))

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(indices)
        batch = (self.images[idx], self.targets[idx] if self.kind == "index" else self.soft[idx])  # (B,) | (B, K)
        batch = batch if self.va is None else (*batch, self.va[idx])
        return (*batch, idx) if self.with_index else batch


def collate_batch(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The dataset already returns a batch; module-level so worker processes can pickle it."""
    return batch


def init_worker(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process (it stops at a batch boundary and saves; a worker that
    died of it would crash the run instead), then seed as Lightning would (it adds its own only where none is)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class FERDataModule(pl.LightningDataModule):
    """Splits of a decoded source as batches gathered from the memory-mapped cache.

    Args:
        source: a reader from `ferlab.data.sources` (or the synthetic writer), built by Hydra.
        name, num_classes, class_names, in_chans, image_size: what the model sees; images are converted
            (channels, size) on the device, so a 48x48 grayscale set can feed an RGB 224x224 model.
        mean, std: per-channel normalization in [0, 1] units, or "auto" to measure them on the train split.
        sampler: "random" or "balanced" (WeightedRandomSampler, weight 1/count of the image's class).
        split: official (the source's validation split) | random (stratified, seeded `val_fraction` of train) |
            None (random exactly when val_fraction is set).
        val_fraction, test_fraction: shares of train carved (stratified, seeded) into validation / test.
        test_splits: metric prefix -> split name (or list of names, concatenated); None: the source's own.
        clean: a `Cleaning` (or its keys): near-blank and duplicate training images.
        cache_dir: where decoded datasets are cached (None: decoded into a temporary file on every run).
        decode_workers: processes decoding image files on a cache miss (None: one per CPU; 1: this process).
        va_targets: batches carry each image's (valence, arousal) after its class (`head=va|expr_va` sets it);
            the data must have them (AffectNet). Evaluation reads them whenever the data has them (`va_for`).
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
        split: str | None = None,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        test_splits: Mapping[str, str | Sequence[str]] | None = None,
        clean: Cleaning | Mapping | None = None,
        cache_dir: str | None = None,
        decode_workers: int | None = None,
        seed: int = 0,
        augment: BatchAugment | None = None,
        va_targets: bool = False,
    ) -> None:
        super().__init__()
        check_choice("data.sampler", sampler, ("random", "balanced"))
        if len(class_names) != num_classes:
            raise FerlabError(f"data.class_names has {len(class_names)} names but data.num_classes is {num_classes}")
        self.source, self.name = source, name
        self.num_classes, self.class_names = num_classes, list(class_names)
        self.in_chans, self.image_size = in_chans, image_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.sampler, self.seed = num_workers, sampler, seed
        self.mean_cfg, self.std_cfg = mean, std
        self.policy, self.val_fraction = resolve_policy(split, val_fraction)
        self.test_fraction, self.cache_dir = test_fraction, cache_dir
        if decode_workers is not None and int(decode_workers) < 1:
            raise FerlabError(f"data.decode_workers: expected a number of processes >= 1 or null, got {decode_workers}")
        self.decode_workers = None if decode_workers is None else int(decode_workers)
        chosen = test_splits if test_splits is not None else getattr(source, "test_splits", {"test": "test"})
        self.test_splits = {str(k): v if isinstance(v, str) else list(v) for k, v in chosen.items()}
        self.cleaning = clean if isinstance(clean, Cleaning) else Cleaning(**dict(clean or {}))
        self.augment = augment or BatchAugment()
        self.mix = self.augment.mixing(num_classes)
        self.va_targets, self.va_all = bool(va_targets), None  # va_all: (N, 2) of the whole cached set, or None
        if self.va_targets and not getattr(source, "provides_va", False):
            raise FerlabError(self._no_va())
        if self.va_targets and self.mix is not None:
            raise FerlabError("augment.mixup/cutmix mix images but not their valence/arousal targets: turn batch "
                              "mixing off with a VA head (head=va|expr_va)")
        self.splits: dict[str, tuple[ImageSet, Tensor]] = {}
        self.train_soft: Tensor | None = None
        self.train_kind = "index"
        self.index_batches = False  # training batches end with their train-split rows (set by a method needing them)
        self.meta: dict = {}
        self._prepared: FERData | None = None  # what prepare_data loaded, for setup in the same process

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_prepared": None}  # DDP spawn: each rank loads (maps) the cache itself

    def prepare_data(self) -> None:
        """Decode once (on the first rank of a node) or check the cache; setup reuses what this loaded."""
        if self.splits:  # set up already (Lightning calls this again before testing)
            return
        self.source.prepare()
        self._prepared = load_or_build(self.source, self.cache_dir, self.decode_workers)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self._load()
        split, val_name, notes = assign_splits(
            data.split, data.targets, name=self.name, policy=self.policy, val_fraction=self.val_fraction,
            test_fraction=self.test_fraction, val_split=getattr(self.source, "val_split", "val"), seed=self.seed)
        self.meta = {**data.meta, "splits": notes}
        self._build(data, split, val_name)
        self._clean(data)
        self._set_normalization()
        self.meta["class_counts"] = {k: torch.bincount(t, minlength=self.num_classes).tolist()
                                     for k, (_, t) in self.splits.items()}
        log.info("data %s: %s", self.name, self.sizes)

    def _load(self) -> FERData:
        """The cached (or freshly decoded) data after the source's cheap post-cache step, checked."""
        data = self._prepared if self._prepared is not None else \
            load_or_build(self.source, self.cache_dir, self.decode_workers)  # another rank: map the cache
        self._prepared = None
        finish = getattr(self.source, "finish", None)
        data = finish(data) if finish is not None else data
        channels = data.images.shape[1]
        if channels not in (1, 3):
            raise FerlabError(f"data {self.name!r}: images have {channels} channels; expected 1 or 3")
        if len(data.targets) and int(data.targets.max()) >= self.num_classes:
            raise FerlabError(f"data {self.name!r}: label {int(data.targets.max())} but num_classes={self.num_classes}")
        check_choice("train_targets", data.train_targets, TRAIN_TARGETS)
        self.va_all = None if data.va is None else torch.from_numpy(np.asarray(data.va, dtype=np.float32))
        if self.va_targets and (self.va_all is None or not torch.isfinite(self.va_all).all(1).any()):
            raise FerlabError(self._no_va())
        if data.train_targets != "index" and (data.soft_targets is None or data.soft_targets.shape[1] != self.num_classes):
            raise FerlabError(f"data {self.name!r}: {data.train_targets} targets need (N, {self.num_classes}) soft targets")
        return data

    def _no_va(self) -> str:
        return (f"data {self.name!r} ({type(self.source).__name__}) has no valence/arousal targets, which head=va and "
                "head=expr_va train on (AffectNet has them: data=affectnet); use head=classes with this data")

    def _build(self, data: FERData, split: np.ndarray, val_name: str) -> None:
        """Images (row indices into the mapped array) and targets per split name; `val` may alias the split that
        validates (e.g. test_public)."""
        everything = ImageSet(data.images)
        for code, name in enumerate(SPLITS):
            idx = np.flatnonzero(split == code)
            if len(idx):
                self.splits[name] = (everything.subset(idx), torch.from_numpy(data.targets[idx]))
                if name == "train" and data.train_targets != "index":
                    self.train_soft, self.train_kind = torch.from_numpy(data.soft_targets[idx]), data.train_targets
        if val_name != "val" and val_name in self.splits:
            self.splits["val"] = self.splits[val_name]
        wanted = ["train", "val", *(n for v in self.test_splits.values() for n in ([v] if isinstance(v, str) else v))]
        for name in wanted:
            if name not in self.splits:
                raise FerlabError(
                    f"data {self.name!r}: the {name!r} split is empty (splits found: {list(self.splits)}); "
                    "data.split=random carves validation and data.test_fraction a test split out of train")
        empty = [c for c, n in zip(self.class_names, self.class_counts.tolist(), strict=True) if n == 0]
        if empty:
            log.warning("data %s: no training images of class(es) %s", self.name, empty)

    def _clean(self, data: FERData) -> None:
        """Drop near-blank / duplicate training images as `clean` says (from the cached per-row digests and
        standard deviations); the counts go to the meta."""
        images, targets = self.splits["train"]
        others = {"val": self.splits["val"][0].index}
        others.update({p: self._eval_set(p)[0].index for p in self.test_splits})
        keep, report = clean_train(images.index, others, self.cleaning, data.digests, data.pixel_std)
        self.meta["clean"] = report
        if not keep.all():
            keep_t = torch.from_numpy(keep)
            self.splits["train"] = (images.subset(keep), targets[keep_t])
            self.train_soft = None if self.train_soft is None else self.train_soft[keep_t]
            if not len(self.splits["train"][1]):
                raise FerlabError(f"data {self.name!r}: cleaning removed every training image ({report})")

    def _set_normalization(self) -> None:
        if self.mean_cfg == "auto" or self.std_cfg == "auto":
            mean, std = self._measure()
        else:
            mean, std = torch.tensor(list(self.mean_cfg)), torch.tensor(list(self.std_cfg))
        if len(mean) == 1 and self.in_chans == 3:
            mean, std = mean.repeat(3), std.repeat(3)
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise FerlabError(f"data.mean/data.std need {self.in_chans} values, got {mean.tolist()} / {std.tolist()}")
        if (std <= 0).any():
            raise FerlabError(f"data.std must be positive, got {std.tolist()}")
        self.mean, self.std = mean.view(1, -1, 1, 1).float(), std.view(1, -1, 1, 1).float()
        self.meta["normalization"] = {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                                      "measured": self.mean_cfg == "auto" or self.std_cfg == "auto"}

    def _measure(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of (a seeded sample of) the train images in model space, in chunks."""
        images = self.splits["train"][0]
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(len(images), generator=g)[:AUTO_NORM_IMAGES]
        total = torch.zeros(self.in_chans, dtype=torch.float64)
        square, count = torch.zeros_like(total), 0
        row_bytes = int(np.prod(images.shape[1:]))
        for chunk in pick.split(max(1, min(1024, AUTO_NORM_CHUNK_BYTES // row_bytes))):
            x = self._to_model_space(images[chunk].float().div_(255))  # (B, C, S, S)
            total += x.sum((0, 2, 3), dtype=torch.float64)
            square += x.square().sum((0, 2, 3), dtype=torch.float64)
            count += x[:, 0].numel()
        mean = total / count
        return mean.float(), (square / count - mean * mean).clamp(min=0).sqrt().float()

    @property
    def sizes(self) -> dict[str, int]:
        """Images per split (and per test prefix when it names more than one split)."""
        out = {name: len(t[1]) for name, t in self.splits.items()}
        out.update({p: len(self._eval_set(p)[1]) for p, v in self.test_splits.items() if not isinstance(v, str)})
        return out

    @property
    def class_counts(self) -> Tensor:
        """(K,) training images per class."""
        return torch.bincount(self.splits["train"][1], minlength=self.num_classes)

    def class_weights(self, power: float = 1.0) -> Tensor:
        """(K,) inverse-frequency weights from the train split: the ones `loss=weighted_ce` uses."""
        return inverse_frequency_weights(self.class_counts, power)

    def _eval_set(self, prefix: str) -> tuple[ImageSet, Tensor]:
        """The images and targets a test prefix evaluates (several splits are concatenated, as indices)."""
        names = self.test_splits[prefix]
        if isinstance(names, str):
            return self.splits[names]
        parts = [self.splits[n] for n in names]
        return ImageSet.concat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def va_for(self, images: ImageSet) -> Tensor | None:
        """(M, 2) valence/arousal of a set's images (NaN: not annotated), or None when the data has none."""
        return None if self.va_all is None else self.va_all[torch.from_numpy(images.index)]

    def _loader(self, images: ImageSet, targets: Tensor, train: bool) -> DataLoader:
        """A training loader resumable mid-epoch (`ferlab.data.resumable`), or an evaluation loader in order."""
        va = self.va_for(images) if self.va_targets else None
        dataset = BatchTensorDataset(images, targets, self.train_soft, self.train_kind, self.index_batches, va=va) \
            if train else BatchTensorDataset(images, targets, va=va)
        # each loader has its own generator: creating an iterator (worker seeds) never draws from the global RNG,
        # whose stream must be the same whenever a run resumes, with or without persistent workers
        common = {"num_workers": self.num_workers, "collate_fn": collate_batch, "pin_memory": torch.cuda.is_available(),
                  "persistent_workers": self.num_workers > 0, "worker_init_fn": init_worker,
                  "generator": torch.Generator()}
        if not train:
            return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **common)
        if self.sampler == "balanced":
            weights = 1.0 / self.class_counts.clamp(min=1).double()
            sampler = EpochWeightedSampler(weights[targets], num_samples=len(targets), replacement=True)
        else:
            sampler = EpochRandomSampler(dataset)
        return ResumableLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                               drop_last=len(dataset) > self.batch_size, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(*self.splits["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(*self.splits["val"], train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(*self._eval_set(p), train=False) for p in self.test_splits]

    def predict_dataloader(self) -> DataLoader:
        return self._loader(*self._eval_set(next(iter(self.test_splits))), train=False)

    def _to_model_space(self, x: Tensor) -> Tensor:
        """Float (B,C0,H0,W0) in [0, 1] to the model's channels and size."""
        if x.shape[1] != self.in_chans:
            x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, True)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        return x

    def transform(self, x: Tensor, train: bool) -> Tensor:
        """uint8 (B,C0,H0,W0) on any device -> normalized float (B,in_chans,S,S): augment, convert, normalize.

        In training S is `augment.crop` when set (a random window of the model-size image), else image_size.
        """
        x = x.to(torch.float32, copy=True).div_(255)  # a new tensor: the ops below may work in place
        if train:
            x = self.augment(x)
        x = self._to_model_space(x)  # a tensor of our own (the float copy or newer): normalize in place
        if train and self.augment.crop is not None:
            x = random_crop(x, self.augment.crop)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))

    def train_targets(self, y: Tensor) -> Tensor:
        """A training batch's targets as the loss takes them: for "sample" targets, a class drawn from each (B, K)
        row, here in the training process (on the device, from the RNG a resume restores) whatever the workers."""
        return torch.multinomial(y, 1).squeeze(1) if self.train_kind == "sample" and y.ndim == 2 else y

    def on_after_batch_transfer(self, batch: tuple[Tensor, ...], dataloader_idx: int) -> tuple[Tensor, ...]:
        """(x, y), with batch mixing in training (x, mixed (B, K) targets, the images' own class ids (B,)); with
        `va_targets` valence/arousal (B, 2) follow the targets; with `index_batches` (training), the images'
        train-split rows (B,) come last."""
        x, y, *rest = batch
        training = self.trainer is not None and self.trainer.training
        x = self.transform(x, train=training)
        if training:
            y = self.train_targets(y)
        if not training or self.mix is None:
            return (x, y, *rest)
        hard = y if y.ndim == 1 else y.argmax(1)  # FER+ distributions: the most-voted class, before mixing
        return (*self.mix(x, y), hard, *rest)  # mixing and valence/arousal exclude each other
