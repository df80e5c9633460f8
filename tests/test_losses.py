"""The loss options: hand-computed values, class ids and distributions, weights from the train split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from ferlab.lit.losses import ClassWeightedCE, OffTargetSmoothingCE, SoftTargetCrossEntropy, as_distribution

LOSSES = ("ce", "label_smoothing", "smooth_report001", "weighted_ce", "soft_ce")


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])


def test_smooth_report001_matches_its_formula_by_hand():
    logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    log_p = torch.log_softmax(logits, 1)[0]
    e = 0.05
    expected = -((1 - e) * log_p[0] + e / 2 * log_p[1] + e / 2 * log_p[2])  # others get e / (K - 1)
    assert torch.allclose(OffTargetSmoothingCE(e)(logits, target), expected)
    pytorch = F.cross_entropy(logits, target, label_smoothing=e)  # gives the true class 1 - e + e/K instead
    assert not torch.allclose(pytorch, expected)


def test_smooth_report001_with_zero_smoothing_is_plain_ce(batch):
    logits, target = batch
    assert torch.allclose(OffTargetSmoothingCE(0.0)(logits, target), F.cross_entropy(logits, target))


def test_weighted_ce_with_fixed_weights_equals_pytorch(batch):
    logits, target = batch
    w = [1.0, 2.0, 0.5, 3.0, 1.0]
    ours = ClassWeightedCE(5, weights=w)(logits, target)
    assert torch.allclose(ours, F.cross_entropy(logits, target, weight=torch.tensor(w)))


def test_weighted_ce_learns_inverse_frequency_from_counts(batch):
    logits, target = batch
    loss = ClassWeightedCE(5)
    assert torch.allclose(loss(logits, target), F.cross_entropy(logits, target))  # uniform until counts arrive
    loss.set_class_counts(torch.tensor([10, 40, 25, 25, 0]))
    # N / (K_present * n_c) with N = 100 and 4 classes present; an empty class gets 0
    assert torch.allclose(loss.weight, torch.tensor([2.5, 0.625, 1.0, 1.0, 0.0]))
    assert torch.allclose(loss(logits, target), F.cross_entropy(logits, target, weight=loss.weight))
    assert "weight" not in loss.state_dict()  # recomputed every run, never stored in checkpoints


def test_soft_ce_on_vote_counts_is_cross_entropy_of_their_shares(batch):
    logits, _ = batch
    votes = torch.tensor([[6.0, 4.0, 0, 0, 0]] * 6)  # FER+ style: 6 and 4 of 10 votes
    log_p = torch.log_softmax(logits, 1)
    expected = -(0.6 * log_p[:, 0] + 0.4 * log_p[:, 1]).mean()
    assert torch.allclose(SoftTargetCrossEntropy()(logits, votes), expected)
    assert torch.allclose(F.cross_entropy(logits, votes / 10), expected)  # and PyTorch's ce agrees


@pytest.mark.parametrize("option", LOSSES)
def test_every_loss_takes_ids_and_one_hot_distributions_alike(make_cfg, option, batch):
    logits, target = batch
    loss = instantiate(make_cfg(f"loss={option}", "data.num_classes=5", "data.class_names=[a,b,c,d,e]").loss)
    by_ids = loss(logits, target)
    by_dist = loss(logits, F.one_hot(target, 5).float())
    assert torch.isfinite(by_ids) and torch.allclose(by_ids, by_dist)


def test_distribution_targets_are_checked_for_shape(batch):
    logits, _ = batch
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        OffTargetSmoothingCE()(logits, torch.rand(6, 4))
    with pytest.raises(ValueError, match="integers"):
        as_distribution(torch.tensor([0.0, 1.0]), 5)


def test_weighted_ce_rejects_a_weight_list_of_the_wrong_length():
    with pytest.raises(ValueError, match="3 values but there are 5 classes"):
        ClassWeightedCE(5, weights=[1, 2, 3])


def test_classifier_hands_train_counts_to_weighted_ce(make_cfg):
    from ferlab.tasks.train import build

    cfg = make_cfg("loss=weighted_ce", "debug=fdr", "trainer=cpu", "logger=none")
    parts = build(cfg)
    parts["trainer"].fit(parts["model"], datamodule=parts["datamodule"])
    counts = parts["datamodule"].class_counts.float()
    present = counts > 0
    expected = torch.where(present, counts.sum() / (present.sum() * counts.clamp(min=1)), torch.zeros_like(counts))
    assert torch.allclose(parts["model"].loss_fn.weight, expected)
    assert math.isclose(float(expected[present].min()), float(expected[3]))  # happy, the largest class, weighs least
