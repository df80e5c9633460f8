"""Rebuild a trained network from a checkpoint alone: the run config stored in it says how.

Used by eval, explain, predict, demo and export, so none of them needs the model overrides repeated.
Loading is weights-only; a file that is missing, truncated, foreign, or whose weights do not fit the
rebuilt network is one clear `FerlabError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferlab.errors import FerlabError
from ferlab.lit.ckpt_file import load_checkpoint


@dataclass
class Restored:
    """A network in eval mode plus what is needed to feed it.

    config: the resolved run config (plain dict) the checkpoint was trained with.
    class_names: label order of the head; in_chans, image_size, mean, std: the input it expects
    (float images in [0, 1] are normalized as (x - mean) / std).
    """

    net: nn.Module
    config: dict[str, Any]
    class_names: list[str]
    in_chans: int
    image_size: int
    mean: list[float]
    std: list[float]
    path: Path

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> the network's input scale."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _norm_stats(checkpoint: dict, data: dict, in_chans: int) -> tuple[list[float], list[float]]:
    """The normalization the run trained with: measured values saved by the datamodule win over config."""
    stats = checkpoint.get("ferlab_normalization") or {}
    mean, std = stats.get("mean", data.get("mean")), stats.get("std", data.get("std"))
    if not isinstance(mean, list) or not isinstance(std, list):
        raise FerlabError("checkpoint has no usable normalization (data.mean/std) in its config")
    if len(mean) == 1 and in_chans == 3:
        mean, std = mean * 3, std * 3
    return [float(m) for m in mean], [float(s) for s in std]


def restore(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Restored:
    """Load a ferlab checkpoint (weights_only) and rebuild its network from the stored config."""
    from hydra.utils import instantiate

    path = Path(ckpt_path)
    checkpoint = load_checkpoint(path, map_location=map_location)
    hparams = checkpoint.get("hyper_parameters") or {}
    config = hparams.get("config")
    if not isinstance(config, dict) or "model" not in config or "state_dict" not in checkpoint:
        raise FerlabError(f"{path} is not a ferlab checkpoint (no stored run config or weights)")
    try:
        net = instantiate(config["model"])
    except Exception as e:  # the stored model config no longer builds (renamed class, removed argument)
        raise FerlabError(f"{path}: cannot rebuild model {config['model'].get('_target_')}: {e}") from None
    weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise FerlabError(f"{path}: weights do not fit the rebuilt model: {first}") from None
    data = config.get("data", {})
    in_chans = int(data.get("in_chans", 1))
    mean, std = _norm_stats(checkpoint, data, in_chans)
    return Restored(
        net=net.eval().to(map_location),
        config=config,
        class_names=list(hparams.get("class_names") or data.get("class_names") or []),
        in_chans=in_chans,
        image_size=int(data.get("image_size", 48)),
        mean=mean,
        std=std,
        path=path,
    )


def check_classes(restored: Restored, num_classes: int, where: str) -> None:
    """A checkpoint's head must match the data it is used on."""
    if len(restored.class_names) != num_classes:
        raise FerlabError(
            f"{restored.path} predicts {len(restored.class_names)} classes {restored.class_names}, "
            f"but {where} has {num_classes}"
        )
