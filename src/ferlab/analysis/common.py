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

from ferlab.errors import FerlabError
from ferlab.lit.restore import Restored, check_classes, restore
from ferlab.runner import require_checkpoint


@dataclass
class Loaded:
    """A restored checkpoint, the datamodule it is evaluated on (set up), and the device to run on.

    data_changed: the data is not the checkpoint's own (`data=` or `+data.*` was given).
    """

    restored: Restored
    datamodule: Any  # FERDataModule
    device: torch.device
    data_changed: bool


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when available, else CPU; a CUDA device on a machine without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FerlabError(f"device: expected auto, cpu, cuda or cuda:<n>, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FerlabError(f"device={name}: CUDA is not available on this machine; use device=cpu or auto")
    return device


def data_config(cfg: DictConfig, stored: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The data to evaluate on: the checkpoint's own, a `data=<option>`, or the checkpoint's with `+data.*` changes."""
    if "data" not in stored:
        raise FerlabError("the checkpoint stores no data config; pass data=<option> (e.g. data=fer2013)")
    chosen = cfg.get("data")
    if chosen is None:
        return stored["data"], False
    plain = OmegaConf.to_container(chosen, resolve=True)
    if "_target_" in plain:
        return plain, True
    return OmegaConf.to_container(OmegaConf.merge(stored["data"], plain)), True


def check_class_names(restored: Restored, class_names: list[str], where: str) -> None:
    """Same count (restore.check_classes) and the same names in the same order, ignoring case."""
    check_classes(restored, len(class_names), where)
    if [n.lower() for n in restored.class_names] != [n.lower() for n in class_names]:
        raise FerlabError(f"{restored.path} predicts classes {restored.class_names}, but {where} has {class_names} "
                          "(different names or order: the labels would be compared wrongly)")


def build_data(data_cfg: dict[str, Any], restored: Restored, batch_size: int | None) -> Any:
    """The datamodule, fed as the network was trained: its channels, input size and normalization."""
    from hydra.utils import instantiate

    kwargs: dict[str, Any] = {"in_chans": restored.in_chans, "image_size": restored.image_size,
                              "mean": restored.mean, "std": restored.std, "augment": None}
    if batch_size:
        kwargs["eval_batch_size"] = int(batch_size)
    datamodule = instantiate(data_cfg, **kwargs)
    check_class_names(restored, list(datamodule.class_names), f"data {datamodule.name!r}")
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule


def load(cfg: DictConfig) -> Loaded:
    """Restore `cfg.ckpt_path` (on CPU, weights only), build its data and move the network to `cfg.device`."""
    require_checkpoint(cfg.get("ckpt_path"))
    device = resolve_device(str(cfg.get("device", "auto")))
    restored = restore(cfg.ckpt_path, map_location="cpu")  # a GPU-trained checkpoint loads anywhere
    with open_dict(cfg):
        if cfg.get("seed") is None:  # data=: a split carved from train must be the one the checkpoint trained with
            cfg.seed = int(restored.config.get("seed") or 0)
    data_cfg, changed = data_config(cfg, restored.config)
    datamodule = build_data(data_cfg, restored, cfg.get("batch_size"))
    restored.net.to(device)
    return Loaded(restored, datamodule, device, changed)


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
