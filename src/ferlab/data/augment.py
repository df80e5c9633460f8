"""Augmentation on whole batches, on the device that trains, with a separate random draw per image.

Every op takes and returns a float batch (B, C, H, W) in [0, 1]. torchvision's v2 transforms applied to a
batched tensor draw one set of parameters for the whole batch; these draw B sets (one flip, angle, crop
offset and jitter per image) from torch's RNG on the batch's device, so `seed_everything` makes them repeatable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferlab.data.mixing import BatchMix, mix_settings
from ferlab.errors import FerlabError


def _uniform(b: int, lo: float, hi: float, like: Tensor) -> Tensor:
    """(B,) uniform draws in [lo, hi) on the batch's device."""
    return torch.rand(b, device=like.device, dtype=like.dtype) * (hi - lo) + lo


def _chance(b: int, p: float, like: Tensor) -> Tensor:
    """(B,1,1,1) boolean mask: which images an op with probability p applies to."""
    return (torch.rand(b, device=like.device) < p).view(b, 1, 1, 1)


def _where_drawn(b: int, p: float, out: Tensor, x: Tensor) -> Tensor:
    """(B, C, H, W): `out` for the images an op with probability p applies to, `x` for the rest (no draw at p=1)."""
    return out if p >= 1 else torch.where(_chance(b, p, x), out, x)


class BatchAugment(nn.Module):
    """What training batches go through: `ops` in order at the images' own size (an empty list is the identity,
    `augment=none`), then, at the model's input size, a random `crop` and batch mixing.

    Args:
        ops: per-image random ops on (B, C, H, W) floats in [0, 1].
        crop: side of a random square window cut from each training image once it has the model's input size
            (null: none). The network then trains on crop x crop inputs and is validated and tested on whole images;
            `tta=ten_crop tta.crop_size=<crop> tta.resize=false` tests on ten such windows instead.
        mixup, cutmix: `{alpha, p}` for `ferlab.data.mixing.BatchMix` (p 0: off).
    """

    def __init__(self, ops: Sequence[nn.Module] = (), crop: int | None = None, mixup: Mapping | None = None,
                 cutmix: Mapping | None = None) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        if crop is not None and int(crop) < 1:
            raise FerlabError(f"augment.crop must be a positive number of pixels or null, got {crop}")
        self.crop = None if crop is None else int(crop)
        # parsed here, so bad values fail when the config is built
        self._mixing = any(mix_settings(name, spec)[1] > 0 for name, spec in (("mixup", mixup), ("cutmix", cutmix)))
        self.mixup, self.cutmix = dict(mixup or {}), dict(cutmix or {})

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) float in [0, 1]
        for op in self.ops:
            x = op(x)
        return x

    def mixing(self, num_classes: int) -> BatchMix | None:
        """The batch mixer for `num_classes` classes, or None when mixup and cutmix are both off."""
        if not self._mixing:
            return None  # off: torchvision's v2 transforms are not even imported (eval, predict, explain)
        return BatchMix(num_classes, self.mixup, self.cutmix)


def random_crop(x: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> (B, C, size, size): each image its own random window (one gather for the batch)."""
    b, _, h, w = x.shape
    if size > min(h, w):
        raise FerlabError(f"augment.crop={size} does not fit the model's {h}x{w} input (data.image_size)")
    if size == h == w:
        return x
    dy = torch.randint(0, h - size + 1, (b,), device=x.device)
    dx = torch.randint(0, w - size + 1, (b,), device=x.device)
    return _crop_windows(x, dy, dx, size, size)


class RandomHorizontalFlip(nn.Module):
    """Mirror each image with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(_chance(len(x), self.p, x), x.flip(-1), x)


class RandomAffine(nn.Module):
    """Rotation (degrees), translation (fraction of size), scale and shear in one grid_sample per batch.

    `fill` is grid_sample's padding mode: zeros (torchvision's default), border or reflection.
    """

    def __init__(
        self,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: Sequence[float] = (1.0, 1.0),
        p: float = 1.0,
        fill: str = "zeros",
    ) -> None:
        super().__init__()
        self.degrees, self.translate, self.scale, self.p, self.fill = degrees, translate, tuple(scale), p, fill

    def forward(self, x: Tensor) -> Tensor:
        b = len(x)
        angle = _uniform(b, -self.degrees, self.degrees, x) * (math.pi / 180)
        s = _uniform(b, *self.scale, x)
        tx, ty = (_uniform(b, -self.translate, self.translate, x) * 2 for _ in range(2))  # grid units span 2
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B,2,3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode=self.fill, align_corners=False)
        return _where_drawn(b, self.p, out, x)


class RandomPadCrop(nn.Module):
    """With probability p, zero-pad by `padding` and crop back to the original size at a random offset."""

    def __init__(self, padding: int = 2, p: float = 1.0) -> None:
        super().__init__()
        self.padding, self.p = padding, p

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        pad = self.padding
        xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zeros around
        offset = torch.randint(0, 2 * pad + 1, (2, b), device=x.device)  # (dy, dx) per image
        if self.p < 1:  # images left alone take the centre window: the image itself
            offset = torch.where(_chance(b, self.p, x).view(b), offset, pad)
        return _crop_windows(xp, offset[0], offset[1], h, w)


def _crop_windows(x: Tensor, dy: Tensor, dx: Tensor, h: int, w: int) -> Tensor:
    """(B, C, H, W) -> (B, C, h, w): image i's window at top-left (dy[i], dx[i]), one gather for the batch."""
    b, c, _, row = x.shape
    start = (dy * row + dx).view(b, 1)  # flat index of each window's top-left pixel
    index = (start + _window(h, w, row, x.device)).view(b, 1, h * w).expand(b, c, h * w)  # (B, C, h*w)
    return x.flatten(2).gather(2, index).view(b, c, h, w)


@functools.lru_cache(maxsize=8)
def _window(h: int, w: int, row_stride: int, device: torch.device) -> Tensor:
    """(1, H*W) flat offsets of an HxW window inside rows of `row_stride` pixels."""
    rows = torch.arange(h, device=device).view(h, 1) * row_stride
    return (rows + torch.arange(w, device=device)).view(1, h * w)


class RandomResizedCrop(nn.Module):
    """A random area fraction and aspect ratio per image, resized back to the input size (one grid_sample)."""

    def __init__(self, scale: Sequence[float] = (0.6, 1.0), ratio: Sequence[float] = (0.75, 1.333), p: float = 1.0):
        super().__init__()
        self.scale, self.ratio, self.p = tuple(scale), tuple(ratio), p

    def forward(self, x: Tensor) -> Tensor:
        b = len(x)
        area = _uniform(b, *self.scale, x)
        log_r = _uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), x)
        sw = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width / image width
        sh = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
        cx, cy = (1 - sw) * _uniform(b, -1, 1, x), (1 - sh) * _uniform(b, -1, 1, x)
        zero = torch.zeros_like(sw)
        theta = torch.stack([torch.stack([sw, zero, cx], 1), torch.stack([zero, sh, cy], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return _where_drawn(b, self.p, out, x)


class ColorJitter(nn.Module):
    """Per-image brightness, contrast, saturation and hue, like torchvision's ColorJitter arguments.

    brightness/contrast/saturation b give factors in [1-b, 1+b], or pass a (lo, hi) pair (report 001:
    (0.5, 1.5)); hue h shifts by up to h turns (RGB only; saturation and hue leave grayscale alone). The hue
    shift is a chroma rotation in YIQ space (one 3x3 matrix per image) rather than torchvision's HSV round trip.
    """

    def __init__(self, brightness: float | Sequence[float] = 0.0, contrast: float | Sequence[float] = 0.0,
                 saturation: float | Sequence[float] = 0.0, hue: float = 0.0, p: float = 1.0) -> None:
        super().__init__()
        self.brightness, self.contrast = self._range(brightness), self._range(contrast)
        self.saturation, self.hue, self.p = self._range(saturation), hue, p

    @staticmethod
    def _range(v: float | Sequence[float]) -> tuple[float, float]:
        return (max(0.0, 1 - v), 1 + v) if isinstance(v, (int, float)) else (float(v[0]), float(v[1]))

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        # each step clamps to [0, 1] like torchvision's adjust_* functions; in place on `out`, a new tensor
        out = (x * _uniform(b, *self.brightness, x).view(b, 1, 1, 1)).clamp_(0, 1)
        mean = _gray(out).mean((1, 2, 3), keepdim=True)  # (B,1,1,1) contrast pivots on the gray mean
        out.sub_(mean).mul_(_uniform(b, *self.contrast, x).view(b, 1, 1, 1)).add_(mean).clamp_(0, 1)
        if c == 3:
            gray = _gray(out)
            out.sub_(gray).mul_(_uniform(b, *self.saturation, x).view(b, 1, 1, 1)).add_(gray).clamp_(0, 1)
            if self.hue > 0:
                out = _rotate_hue(out, _uniform(b, -self.hue, self.hue, x) * 2 * math.pi).clamp_(0, 1)
        return _where_drawn(b, self.p, out, x)


def _gray(x: Tensor) -> Tensor:
    """(B,1,H,W) luma of an RGB batch (ITU-R 601), or the batch itself when it has one channel."""
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rotate_hue(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate each image's chroma by its angle (radians) in YIQ space: a per-image 3x3 colour matrix."""
    rgb2yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq2rgb = torch.linalg.inv(rgb2yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(-1, 3, 3)
    m = yiq2rgb @ rot @ rgb2yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


class GaussianNoise(nn.Module):
    """With probability p, add N(0, std^2) noise to every pixel and clip to [0, 1]. The default is SCN's and EAC's
    add_gaussian_noise (variance 30 on 0-255 pixels: std sqrt(30) / 255)."""

    def __init__(self, std: float = 30**0.5 / 255, p: float = 0.5) -> None:
        super().__init__()
        self.std, self.p = std, p

    def forward(self, x: Tensor) -> Tensor:
        noisy = (x + torch.randn_like(x) * self.std).clamp_(0.0, 1.0)
        return _where_drawn(len(x), self.p, noisy, x)


class RandomErasing(nn.Module):
    """With probability p, fill one random rectangle per image (area fraction `scale`) with `value`."""

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.02, 0.2), value: float = 0.0) -> None:
        super().__init__()
        self.p, self.scale, self.value = p, tuple(scale), value

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        area = _uniform(b, *self.scale, x)
        log_r = _uniform(b, math.log(0.3), math.log(3.3), x)
        eh = (torch.sqrt(area / torch.exp(log_r)) * h).clamp(1, h)
        ew = (torch.sqrt(area * torch.exp(log_r)) * w).clamp(1, w)
        y0 = torch.rand(b, device=x.device) * (h - eh)
        x0 = torch.rand(b, device=x.device) * (w - ew)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        box = (ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1))
        box = box & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1))
        mask = box.unsqueeze(1) & _chance(b, self.p, x)
        return torch.where(mask, torch.full_like(x, self.value), x)
