"""The synthetic face renderer: deterministic, FER2013-like class frequencies, learnable by a CNN."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from ferlab.data.sources.fer2013 import Fer2013Csv
from ferlab.data.synthetic import (
    CLASS_PROBS,
    SynthSpec,
    make_dataset,
    render,
    sample_labels,
    write_fer2013_csv,
)
from ferlab.labels import FER2013


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    labels = sample_labels(300, np.random.default_rng(1))
    a = render(labels, seed=7, difficulty=0.5)
    b = render(labels, seed=7, difficulty=0.5)
    c = render(labels, seed=8, difficulty=0.5)
    assert a.dtype == np.uint8 and a.shape == (300, 48, 48)
    assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()
    assert (a != c).mean() > 0.5


def test_csv_written_twice_is_byte_identical(tmp_path):
    spec = SynthSpec(num_images=200, seed=3)
    p1 = write_fer2013_csv(tmp_path / "a.csv", *make_dataset(spec))
    p2 = write_fer2013_csv(tmp_path / "b.csv", *make_dataset(spec))
    assert p1.read_bytes() == p2.read_bytes()


def test_class_frequencies_follow_fer2013_training_split():
    labels = sample_labels(50_000, np.random.default_rng(0))
    freq = np.bincount(labels, minlength=7) / len(labels)
    np.testing.assert_allclose(freq, CLASS_PROBS, atol=0.01)
    assert freq[FER2013.index("disgust")] < 0.03 and freq.argmax() == FER2013.index("happy")


def test_difficulty_is_validated():
    try:
        render(np.zeros(2, dtype=np.int64), difficulty=1.5)
    except ValueError as e:
        assert "difficulty" in str(e)
    else:
        raise AssertionError("difficulty 1.5 was accepted")


def test_written_csv_reads_back_through_fer2013_reader(tmp_path):
    images, labels, usage = make_dataset(SynthSpec(num_images=500, seed=1, val_fraction=0.1, test_fraction=0.2))
    path = write_fer2013_csv(tmp_path / "fer2013.csv", images, labels, usage)
    assert path.read_text().splitlines()[0] == "emotion,pixels,Usage"
    data = Fer2013Csv(str(path)).read()
    assert data.images.dtype == np.uint8 and data.images.shape == (500, 1, 48, 48)
    assert data.split_sizes() == {"train": 350, "test_public": 50, "test_private": 100}
    np.testing.assert_array_equal(data.images[:, 0], images)
    np.testing.assert_array_equal(data.targets, labels)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]


# Thresholds with margins measured under every CPU kernel set and thread count this machine offers
# (benchmarks/learning_margins.py, results in benchmarks/results/learning_margins.md)
CNN_MIN_ACC, LINEAR_MAX_ACC = 0.8, 0.6


def tiny_cnn_accuracy(num_images: int = 2500, epochs: int = 3) -> tuple[float, float]:
    """(test accuracy, majority-class share) of a 4-block CNN trained `epochs` on all but the last 500 faces."""
    torch.manual_seed(0)
    images, labels, _ = make_dataset(SynthSpec(num_images=num_images, seed=5))
    x = (torch.from_numpy(images).float().div(255).unsqueeze(1) - 0.5) / 0.25
    y = torch.from_numpy(labels)
    cut = num_images - 500
    xtr, ytr, xte, yte = x[:cut], y[:cut], x[cut:], y[cut:]
    net = nn.Sequential(*_block(1, 8), *_block(8, 16), *_block(16, 32), *_block(32, 32),
                        nn.Flatten(), nn.Linear(32 * 3 * 3, 7))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    return acc, float(np.bincount(labels[cut:]).max() / 500)


def linear_accuracy() -> float:
    """Test accuracy of a linear classifier on standardised raw pixels (2500 faces to train, 500 to test)."""
    images, labels, _ = make_dataset(SynthSpec(num_images=3000, seed=5))
    x = torch.from_numpy(images).float().div(255).flatten(1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.from_numpy(labels)
    torch.manual_seed(0)
    lin = nn.Linear(48 * 48, 7)
    opt = torch.optim.Adam(lin.parameters(), 1e-3, weight_decay=1e-3)
    for _ in range(30):
        for idx in torch.randperm(2500).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(lin(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return (lin(x[2500:]).argmax(1) == y[2500:]).float().mean().item()


@pytest.mark.slow
def test_a_tiny_cnn_learns_it_far_above_chance_within_seconds():
    acc, majority = tiny_cnn_accuracy()
    assert acc > CNN_MIN_ACC and acc > 2.5 * majority, (acc, majority)


@pytest.mark.slow
def test_a_linear_classifier_on_raw_pixels_stays_clearly_below_the_cnn():
    acc = linear_accuracy()
    assert acc < LINEAR_MAX_ACC, acc
