"""Where a network looks: saliency maps (report 002) and Grad-CAM on a zoo model's `cam_layer`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferlab.errors import FerlabError


def saliency(net: nn.Module, pixels: Tensor, target: Tensor,
             normalize: Callable[[Tensor], Tensor] = lambda x: x) -> Tensor:
    """|d score[target] / d pixel|, max over channels: (B, C, H, W) pixels in [0, 1] -> (B, H, W).

    `normalize` maps pixels to the network's input, so the gradient is taken with respect to the pixels.
    """
    with torch.enable_grad():
        x = pixels.detach().clone().requires_grad_(True)
        scores = net(normalize(x)).gather(1, target.view(-1, 1).to(x.device)).sum()
        (grad,) = torch.autograd.grad(scores, x)
    return grad.abs().amax(1)


def scale_maps(maps: Tensor) -> Tensor:
    """Each (H, W) map of (B, H, W) divided by its maximum, for display in [0, 1] (all-zero maps stay 0)."""
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)


def grad_cam(net: nn.Module, x: Tensor, target: Tensor, layer: nn.Module | None = None) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017) at `layer` (default: `net.cam_layer`): (B, C, H, W) input -> (B, H, W) in [0, 1].

    Channel weights are the spatially averaged gradients of score[target] w.r.t. the layer's (B, C', h, w)
    output; the map is ReLU(sum of weighted channels), upsampled to the input size and scaled to its maximum.
    """
    layer = layer if layer is not None else getattr(net, "cam_layer", None)
    if layer is None:
        raise FerlabError(f"{type(net).__name__} has no cam_layer to explain with Grad-CAM")
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = net(x.detach().requires_grad_(True))
            if not captured or captured[-1].ndim != 4:
                raise FerlabError(f"Grad-CAM needs a (B, C, h, w) output from {type(layer).__name__}")
            activation = captured[-1]  # (B, C', h, w)
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    weights = grad.mean((2, 3), keepdim=True)  # (B, C', 1, 1)
    cam = F.relu((weights * activation).sum(1, keepdim=True)).detach()  # (B, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return scale_maps(cam)
