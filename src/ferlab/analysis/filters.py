"""Filter visualization (report 002): gradient ascent from a random image to maximize one filter's
activation in a chosen layer, pixels clamped to the valid range [0, 1] after every step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ferlab.errors import FerlabError


def find_layer(net: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The submodule called `name` (dotted, as in `named_modules`); None: the net's `cam_layer`."""
    if name is None:
        name = getattr(net, "cam_layer_name", "")
        if not name:
            raise FerlabError(f"{type(net).__name__} has no cam_layer; name a layer with filters.layer=<name>")
    modules = dict(net.named_modules())
    if name not in modules or not name:
        blocks = [n for n in modules if n and n.count(".") <= 1]  # stages and their blocks, e.g. stages.2
        shown = ", ".join(blocks[:12]) + (" ..." if len(blocks) > 12 else "")
        raise FerlabError(f"filters.layer: no layer {name!r} in {type(net).__name__}; its layers include {shown}")
    return name, modules[name]


def _capture(layer: nn.Module) -> tuple[list[Tensor], Callable[[], None]]:
    """The layer's outputs as they are computed, and a function removing the hook."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    return captured, handle.remove


def channel_means(activation: Tensor) -> Tensor:
    """(B, C, ...) activation -> (B, C) mean of each channel over its spatial positions."""
    return activation.flatten(2).mean(2) if activation.ndim > 2 else activation


@contextmanager
def frozen(net: nn.Module) -> Iterator[None]:
    """The net's parameters do not require gradients inside the block (only the input learns)."""
    trainable = [p for p in net.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def maximize_filters(net: nn.Module, layer: nn.Module, shape: tuple[int, int, int], filters: list[int],
                     steps: int = 60, lr: float = 0.05, seed: int = 0,
                     normalize: Callable[[Tensor], Tensor] = lambda x: x) -> tuple[Tensor, Tensor, Tensor]:
    """One image per filter id: (F, C, H, W) in [0, 1] maximizing that channel's mean activation in `layer`.

    Starts from seeded noise around mid-gray; Adam on the pixels; `normalize` maps pixels to the net's input.
    Returns the images and each filter's activation (F,) at the start and at the end.
    """
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    pixels = (0.5 + 0.1 * torch.randn(len(filters), *shape, generator=g)).clamp(0, 1).to(device).requires_grad_(True)
    pick = (torch.arange(len(filters), device=device), torch.as_tensor(filters, device=device))
    optimizer = torch.optim.Adam([pixels], lr=lr)
    captured, remove = _capture(layer)

    def activation() -> Tensor:  # (F,) each image's own filter
        captured.clear()
        net(normalize(pixels))
        return channel_means(captured[-1])[pick]

    try:
        with frozen(net), torch.enable_grad():
            start = activation().detach()
            for _ in range(steps):
                optimizer.zero_grad()
                (-activation().sum()).backward()
                optimizer.step()
                with torch.no_grad():
                    pixels.clamp_(0, 1)  # stay valid images
            end = activation().detach()
    finally:
        remove()
    return pixels.detach(), start.cpu(), end.cpu()


def num_channels(net: nn.Module, layer: nn.Module, shape: tuple[int, int, int],
                 normalize: Callable[[Tensor], Tensor] = lambda x: x) -> int:
    """How many channels (filters) `layer` outputs for an input of `shape` (C, H, W)."""
    device = next(net.parameters()).device
    captured, remove = _capture(layer)
    try:
        with torch.no_grad():
            net(normalize(torch.full((1, *shape), 0.5, device=device)))
    finally:
        remove()
    if not captured:
        raise FerlabError(f"layer {type(layer).__name__} is not used in the forward pass")
    return int(captured[-1].shape[1])
