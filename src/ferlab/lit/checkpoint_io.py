"""Checkpoints written atomically (a kill mid-save never corrupts last.ckpt) and loaded weights-only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ferlab.data.io import atomic_write
from ferlab.errors import FerlabError


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """torch.load with weights_only=True; a missing, truncated or foreign file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FerlabError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FerlabError(f"checkpoint {path} cannot be loaded (truncated or not a ferlab checkpoint): {reason}") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, saving to a temporary file renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None):
        return load_checkpoint(path, map_location=map_location)

    def remove_checkpoint(self, path) -> None:
        if os.path.exists(path):
            os.remove(path)
