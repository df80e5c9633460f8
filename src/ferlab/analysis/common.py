"""What `ferlab eval` and `ferlab explain` share: the checkpoint's network and data, the device, where
results go, and batched forward passes over a split's uint8 images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from ferlab.checkpoints.restore import Restored, check_classes, restore
from ferlab.config.runner import require_checkpoint, user_model
from ferlab.errors import FerlabError
from ferlab.runs.device import resolve_device


@dataclass
class Loaded:
    """A restored checkpoint, the datamodule it is evaluated on (set up), and the device to run on.

    data_changed: the data is not the checkpoint's own (`data=` or `+data.*` was given).
    class_map: how the data's classes map onto the model's by name, where they differ (cross-dataset eval).
    """

    restored: Restored
    datamodule: Any  # FERDataModule
    device: torch.device
    data_changed: bool
    class_map: Any = None  # ferlab.analysis.cross_dataset.ClassMap


@dataclass
class DataChoice:
    """The data config to evaluate on. changed: not the checkpoint's own; trusted: composed by the user
    (`data=<option>`, instantiated like any config) rather than read from the checkpoint (rebuilt as data)."""

    config: dict[str, Any]
    changed: bool
    trusted: bool


def data_config(cfg: DictConfig, stored: dict[str, Any]) -> DataChoice:
    """The data to evaluate on: the checkpoint's own, a `data=<option>`, or the checkpoint's with `+data.*` changes."""
    chosen = cfg.get("data")
    if chosen is not None:
        plain = OmegaConf.to_container(chosen, resolve=True)
        if "_target_" in plain:
            return DataChoice(plain, True, True)
    if not stored.get("data"):
        raise FerlabError("the checkpoint stores no data config; pass data=<option> (e.g. data=fer2013)")
    if chosen is None:
        return DataChoice(stored["data"], False, False)
    return DataChoice(OmegaConf.to_container(OmegaConf.merge(stored["data"], plain)), True, False)


def check_class_names(restored: Restored, class_names: list[str], where: str) -> None:
    """Same count (restore.check_classes) and the same names in the same order, ignoring case."""
    check_classes(restored, len(class_names), where)
    if [n.lower() for n in restored.class_names] != [n.lower() for n in class_names]:
        raise FerlabError(f"{restored.path} predicts classes {restored.class_names}, but {where} has {class_names} "
                          "(different names or order: the labels would be compared wrongly)")


def build_data(choice: DataChoice, restored: Restored, batch_size: int | None, cache_dir: str | None,
               by_name: bool = False) -> tuple[Any, Any]:
    """The datamodule, fed as the network was trained: its channels, input size and normalization, and how its
    classes map onto the model's (None: the same classes). A data config from the checkpoint goes through
    ferlab's registered readers only (`data.rebuild`).
    by_name: other classes are matched by name (cross-dataset eval) instead of refused; checked before decoding.
    A network without class outputs (head=va) takes any data."""
    from hydra.utils import instantiate

    from ferlab.data.rebuild import build_stored_datamodule

    kwargs: dict[str, Any] = {"in_chans": restored.in_chans, "image_size": restored.image_size,
                              "mean": restored.mean, "std": restored.std, "augment": None}
    if batch_size:
        kwargs["eval_batch_size"] = int(batch_size)
    if choice.trusted:
        datamodule = instantiate(choice.config, **kwargs)
    else:
        datamodule = build_stored_datamodule(choice.config, str(restored.path), cache_dir=cache_dir, **kwargs)
    class_map = None
    if not restored.head.has_classes:  # valence/arousal only (head=va): the data's classes are not predicted
        pass
    elif by_name and _differ(restored.class_names, list(datamodule.class_names)):
        from ferlab.analysis.cross_dataset import match_classes

        model_data = str((restored.config.get("data") or {}).get("name", "model"))
        class_map = match_classes(restored.class_names, list(datamodule.class_names), model_data, datamodule.name)
    else:
        check_class_names(restored, list(datamodule.class_names), f"data {datamodule.name!r}")
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule, class_map


def _differ(model_classes: list[str], data_classes: list[str]) -> bool:
    return [n.lower() for n in model_classes] != [n.lower() for n in data_classes]


def load(cfg: DictConfig, by_name: bool = False) -> Loaded:
    """Restore `cfg.ckpt_path` (on CPU, weights only), build its data and move the network to `cfg.device`.

    by_name: data of other classes is evaluated on the classes it shares with the model, matched by name
    (`class_map`, `ferlab.analysis.cross_dataset`); otherwise its classes must be the model's."""
    require_checkpoint(cfg.get("ckpt_path"))
    device = resolve_device(cfg.get("device", "auto"))
    # a GPU-trained checkpoint loads anywhere
    restored = restore(cfg.ckpt_path, map_location="cpu", model=user_model(cfg))
    with open_dict(cfg):
        if cfg.get("seed") is None:  # data=: a split carved from train must be the one the checkpoint trained with
            seed = restored.config.get("seed")
            cfg.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    choice = data_config(cfg, restored.config)
    datamodule, class_map = build_data(choice, restored, cfg.get("batch_size"), cfg.paths.cache_dir, by_name)
    restored.net.to(device)
    return Loaded(restored, datamodule, device, choice.changed, class_map)


def split_sets(datamodule: Any, split: str) -> dict[str, tuple[Any, Tensor]]:
    """Metric prefix -> (uint8 images (N, C, H, W) as an ImageSet: rows of the mapped cache, gathered in batches;
    targets (N,)): every test split of the data, or val / train."""
    if split == "test":
        loaders = datamodule.test_dataloader()
        return {p: (dl.dataset.images, dl.dataset.targets) for p, dl in zip(datamodule.test_splits, loaders, strict=True)}
    return {split: datamodule.splits[split]}


def is_validation(datamodule: Any, images: Tensor) -> bool:
    """True when these images are the split the checkpoint was selected on (e.g. FER2013 PublicTest with test=both)."""
    return images is datamodule.splits["val"][0]


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The ferlab run directory a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), if it is in one."""
    run = Path(ckpt_path).resolve().parent.parent
    in_run = Path(ckpt_path).resolve().parent.name == "checkpoints"
    return run if in_run and ((run / ".hydra").is_dir() or (run / "metrics.json").is_file()) else None


def output_dir(cfg: DictConfig, kind: str, parts: list[str]) -> Path:
    """`out_dir=`, else `<run>/<kind>[/<parts joined by ->]` beside the checkpoint's run, else this task's run dir."""
    if cfg.get("out_dir"):
        out = Path(cfg.out_dir)
    else:
        run = run_dir_of(cfg.ckpt_path)
        out = Path(cfg.paths.output_dir) if run is None else run / kind / "-".join(parts) if parts else run / kind
    if out.exists() and not out.is_dir():
        raise FerlabError(f"out_dir {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def batched(fn: Callable[[Tensor], Tensor], images: Any, datamodule: Any, device: torch.device,
            batch_size: int | None = None) -> Tensor:
    """`fn` on every batch of uint8 `images` (an ImageSet or a tensor: anything with `split(size)`) after the eval
    transform, on `device`; results concatenated on CPU."""
    size = int(batch_size or datamodule.eval_batch_size)
    out = [fn(datamodule.transform(chunk.to(device, non_blocking=True), train=False)).cpu()
           for chunk in images.split(size)]
    return torch.cat(out)


def model_space(datamodule: Any, x: Tensor) -> Tensor:
    """Normalized network input (B, C, S, S) back to [0, 1] pixels, for display and pixel-space gradients."""
    return (x * datamodule.std.to(x.device) + datamodule.mean.to(x.device)).clamp(0, 1)
