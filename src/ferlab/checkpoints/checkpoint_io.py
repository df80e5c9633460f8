"""Lightning's checkpoint IO, writing atomically (a kill mid-save never corrupts last.ckpt; a full disk is one line
and leaves the previous file intact), loading weights-only."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ferlab.checkpoints.ckpt_file import load_checkpoint
from ferlab.runs.io import atomic_write


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nested checkpoint dict: about the size torch.save writes (it does not compress)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, saving to a temporary file renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), size=tensor_bytes(checkpoint))

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None):
        return load_checkpoint(path, map_location=map_location)

    def remove_checkpoint(self, path) -> None:
        if os.path.exists(path):
            os.remove(path)
