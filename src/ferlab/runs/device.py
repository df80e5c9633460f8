"""The one device resolver of eval, explain, predict, demo and export (training leaves it to Lightning)."""

from __future__ import annotations

from typing import Any

from ferlab.errors import FerlabError


def resolve_device(name: Any) -> Any:
    """`auto`: CUDA when available, else CPU; otherwise as torch spells it (cpu, cuda, cuda:1, mps).
    A device this machine does not have is one line, before any model is loaded."""
    import torch

    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FerlabError(f"device: expected auto, cpu, cuda, cuda:<n> or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FerlabError(f"device={name}: CUDA is not available on this machine; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FerlabError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FerlabError(f"device={name}: MPS is not available on this machine; use device=cpu or auto")
    return device
