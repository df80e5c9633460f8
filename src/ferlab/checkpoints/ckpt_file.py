"""Reading a checkpoint file weights-only, without importing Lightning (predict, eval and export start fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ferlab.errors import FerlabError
from ferlab.lit.user_errors import error_line


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """torch.load with weights_only=True; a missing, truncated or foreign file is one clear error.

    mmap: tensors memory-mapped, not read (for a look at the metadata or a few shapes); a file torch cannot map
    (not a zip checkpoint) is loaded in full.
    """
    path = Path(path)
    if not path.is_file():
        raise FerlabError(f"checkpoint not found: {path}")
    if mmap:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except Exception:  # the full load below says what is wrong, if anything
            pass
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        reason = error_line(e)
        raise FerlabError(f"checkpoint {path} cannot be loaded (truncated or not a ferlab checkpoint): {reason}") from None


def net_weights(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The network's tensors of a loaded ferlab checkpoint: its state_dict's `net.*` entries, prefix removed."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        return {}
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
