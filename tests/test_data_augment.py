"""Batched augmentation: every image gets its own draw, each op does what it says, presets compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ferlab.config.runner import CONF_DIR
from ferlab.data import augment as A

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "augment").glob("*.yaml"))


def _faces(b: int = 64, c: int = 1, size: int = 48) -> torch.Tensor:
    """The same asymmetric, textured image repeated b times: any difference between rows is the augmentation."""
    g = torch.Generator().manual_seed(0)
    one = torch.rand(c, size, size, generator=g) * 0.6 + 0.2
    one[:, :, : size // 3] *= 0.5  # left third darker: flips are visible
    return one.expand(b, -1, -1, -1).contiguous()


def _distinct_rows(x: torch.Tensor) -> int:
    return len({tuple(row.flatten().round(decimals=4).tolist()) for row in x})


OPS = {
    "rotation": A.RandomAffine(degrees=10), "translation": A.RandomAffine(translate=0.1),
    "pad_crop": A.RandomPadCrop(padding=2), "resized_crop": A.RandomResizedCrop(),
    "brightness": A.ColorJitter(brightness=0.4), "contrast": A.ColorJitter(contrast=(0.5, 1.5)),
    "saturation": A.ColorJitter(saturation=0.5), "hue": A.ColorJitter(hue=0.1), "erasing": A.RandomErasing(p=1.0),
}


@pytest.mark.parametrize("name", OPS)
def test_each_image_of_a_batch_gets_its_own_draw(name):
    torch.manual_seed(1)
    x = _faces(32, c=3)
    y = OPS[name](x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    # one shared draw (torchvision v2 on a batch) gives 1; pad_crop has 25 offsets, so ~21 of 32 differ
    assert _distinct_rows(y) >= (15 if name == "pad_crop" else 30)


def test_flip_mirrors_about_half_the_images_exactly():
    torch.manual_seed(2)
    x = _faces(400)
    y = A.RandomHorizontalFlip(p=0.5)(x)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all()) and 150 < int(flipped.sum()) < 250


def test_pad_crop_shifts_by_at_most_the_padding_and_only_with_its_probability():
    torch.manual_seed(3)
    x = _faces(200)
    y = A.RandomPadCrop(padding=2, p=0.5)(x)
    shifted = ~(y == x).flatten(1).all(1)
    assert 60 < int(shifted.sum()) < 140
    for img in y[shifted][:20]:  # each is the original moved by (dy, dx) in [-2, 2], zeros entering
        assert any(torch.equal(img, _shift(x[0], dy, dx)) for dy in range(-2, 3) for dx in range(-2, 3))


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
    h, w = img.shape[-2:]
    return padded[:, 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]


def test_color_jitter_factors_stay_in_their_ranges():
    torch.manual_seed(4)
    x = torch.full((500, 1, 8, 8), 0.4)
    y = A.ColorJitter(brightness=(0.5, 1.5))(x)
    ratio = y[:, 0, 0, 0] / 0.4
    assert ratio.min() >= 0.5 - 1e-6 and ratio.max() <= 1.5 + 1e-6 and ratio.std() > 0.2
    gray = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(A.ColorJitter(saturation=0.9, hue=0.4)(gray), gray)  # colour ops skip gray


def test_probability_zero_ops_are_the_identity():
    x = _faces(16, c=3)
    for op in (A.RandomHorizontalFlip(p=0), A.RandomAffine(degrees=30, p=0), A.RandomPadCrop(p=0),
               A.RandomResizedCrop(p=0), A.ColorJitter(brightness=0.5, p=0), A.RandomErasing(p=0)):
        torch.testing.assert_close(op(x), x)


def test_draws_follow_the_seed_and_the_batch_device():
    x = _faces(8)
    aug = A.BatchAugment([A.RandomAffine(degrees=10), A.ColorJitter(brightness=0.3)])
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    torch.testing.assert_close(aug(x), a)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        assert aug(x.to(device)).device.type == device


def _preset(name: str):
    """conf/augment/<name>.yaml over the one it names in `defaults` (none.yaml), as Hydra composes them."""
    cfg = OmegaConf.load(Path(CONF_DIR) / "augment" / f"{name}.yaml")
    parents = [d for d in cfg.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*(_preset(p) for p in parents), cfg)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_and_keep_shape_and_range(preset):
    aug = instantiate(_preset(preset))
    x = _faces(16, c=3, size=40)
    y = aug(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert (preset == "none") == torch.equal(y, x)


def test_report_presets_hold_the_reports_settings():
    ops = {p: instantiate(_preset(p)).ops for p in PRESETS}
    r0 = {type(o).__name__: o for o in ops["report000"]}
    assert r0["RandomAffine"].degrees == 10 and r0["ColorJitter"].brightness == (0.8, 1.2) and r0["ColorJitter"].hue == 0.1
    r1 = {type(o).__name__: o for o in ops["report001"]}
    assert (r1["RandomPadCrop"].padding, r1["RandomPadCrop"].p) == (2, 0.5)
    assert r1["ColorJitter"].brightness == (0.5, 1.5) and r1["ColorJitter"].contrast == (0.5, 1.5)
    assert [type(o).__name__ for o in ops["report002"]] == ["RandomHorizontalFlip", "RandomAffine"]
    assert {"RandomResizedCrop", "RandomAffine", "RandomErasing"} <= {type(o).__name__ for o in ops["strong"]}


def test_training_batches_are_augmented_and_evaluation_batches_only_normalized(tmp_path):
    from ferlab.data.datamodule import FERDataModule
    from ferlab.data.sources.fer2013 import Fer2013Csv
    from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv
    from ferlab.labels import FER2013

    csv = write_fer2013_csv(tmp_path / "f.csv", *make_dataset(SynthSpec(num_images=60, seed=1), cover_classes=True))
    dm = FERDataModule(Fer2013Csv(str(csv)), name="f", num_classes=7, class_names=FER2013, in_chans=1, image_size=48,
                       augment=A.BatchAugment([A.RandomResizedCrop(), A.RandomErasing(p=1.0)]))
    dm.setup("fit")
    x = dm.splits["val"][0][:6]
    expected = (x.float() / 255 - dm.mean) / dm.std
    torch.testing.assert_close(dm.transform(x, train=False), expected)
    assert not torch.allclose(dm.transform(x, train=True), expected)


def test_crop_windows_is_each_images_own_slice():
    """The one gather behind random_crop and RandomPadCrop takes image i's window at (dy[i], dx[i])."""
    x = torch.arange(3 * 2 * 7 * 9).view(3, 2, 7, 9)
    dy, dx = torch.tensor([0, 2, 3]), torch.tensor([4, 0, 1])
    out = A._crop_windows(x, dy, dx, 4, 5)
    for i in range(3):
        assert torch.equal(out[i], x[i, :, dy[i]:dy[i] + 4, dx[i]:dx[i] + 5])
