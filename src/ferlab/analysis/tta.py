"""Test-time augmentation: a network's softmax averaged over views of each image (`tta=none|flip|ten_crop`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ferlab.errors import FerlabError


def _identity(x: Tensor, crop_size: int | None, resize: bool) -> list[Tensor]:
    return [x]


def _flip(x: Tensor, crop_size: int | None, resize: bool) -> list[Tensor]:
    return [x, x.flip(-1)]


def _ten_crop(x: Tensor, crop_size: int | None, resize: bool) -> list[Tensor]:
    """Four corners and the centre, then the same of the mirror image; each resized back to (H, W) if `resize`."""
    from torchvision.transforms.v2.functional import ten_crop

    height, width = x.shape[-2:]
    size = crop_size if crop_size is not None else round(0.9 * min(height, width))
    if not 0 < size <= min(height, width):
        raise FerlabError(f"tta.crop_size={size}: a crop must fit the model's {height}x{width} input")
    crops = ten_crop(x, [size, size])  # 10 x (B, C, size, size)
    if not resize:
        return list(crops)
    return [F.interpolate(c, size=(height, width), mode="bilinear", align_corners=False) for c in crops]


VIEWS: dict[str, Callable[[Tensor, int | None, bool], list[Tensor]]] = {
    "none": _identity,
    "flip": _flip,
    "ten_crop": _ten_crop,
}
NUM_VIEWS = {"none": 1, "flip": 2, "ten_crop": 10}


class TestTimeAugment:
    """Softmax of `net` averaged over views of a normalized batch (B, C, H, W).

    Args:
        mode: none (one view) | flip (the image and its mirror) | ten_crop (4 corners + centre and mirrors).
        crop_size: ten_crop side in pixels of the model input; None: 90% of the side.
        resize: resize crops back to the input side (models trained on full images); False feeds the crops.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, mode: str = "none", crop_size: int | None = None, resize: bool = True) -> None:
        if mode not in VIEWS:
            raise FerlabError(f"tta: expected one of {', '.join(VIEWS)}, got {mode!r}")
        if crop_size is not None and int(crop_size) < 1:
            raise FerlabError(f"tta.crop_size must be a positive number of pixels, got {crop_size}")
        self.mode, self.resize = mode, bool(resize)
        self.crop_size = None if crop_size is None else int(crop_size)

    def views(self, x: Tensor) -> list[Tensor]:
        """The batch as each view sees it: V tensors (B, C, h, w)."""
        return VIEWS[self.mode](x, self.crop_size, self.resize)

    def __call__(self, net: nn.Module, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, K) softmax probabilities averaged over the views (one forward per view)."""
        views = self.views(x)
        total = net(views[0]).float().softmax(1)
        for view in views[1:]:
            total = total + net(view).float().softmax(1)
        return total / len(views)

    def describe(self) -> dict:
        """The settings, for reports."""
        return {"mode": self.mode, "views": NUM_VIEWS[self.mode], "crop_size": self.crop_size, "resize": self.resize}

    def tag(self) -> str:
        """A short name of the settings for folder names: none, flip, ten_crop, ten_crop44, ten_crop44_noresize."""
        if self.mode != "ten_crop":
            return self.mode
        return f"ten_crop{self.crop_size or ''}{'' if self.resize else '_noresize'}"


TARGET = f"{TestTimeAugment.__module__}.{TestTimeAugment.__qualname__}"


def stored_tta(config: Any, where: str) -> TestTimeAugment:
    """The test-time augmentation a checkpoint's run was tested with (its stored `tta`, none when it has none).
    A stored config is data: only ferlab's TestTimeAugment with plain values is built from it."""
    from ferlab.runs.stored import build_stored

    if not config:
        return TestTimeAugment("none")
    return build_stored(TestTimeAugment, TARGET, config, "tta", where, "test-time augmentation")
