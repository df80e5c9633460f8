"""The methods' losses on fixed tensors against values worked out by hand here, and their building blocks against
the official code re-typed from the papers' repositories (EAC's ACLoss, DAN's heads and losses)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferlab.methods.dan import DAN, CrossAttentionHead, affinity_loss, partition_loss
from ferlab.methods.eac import EAC, class_activation_maps, flip_consistency
from ferlab.methods.scn import SCN, SCNNet, rank_regularization, relabels
from ferlab.models.base import FERNet


def ce(logits: list[float], label: int) -> float:
    """Cross entropy of one row, by hand: log(sum_k exp(z_k)) - z_label."""
    return math.log(sum(math.exp(z) for z in logits)) - logits[label]


class Stub(FERNet):
    """A net whose pieces are fixed arithmetic: feature map = x * [1, 2] along the width (not flip-symmetric, so
    EAC's consistency is not trivially 0), pooled by the mean, a linear head with given weights."""

    def __init__(self, weight: list[list[float]], scale: list[float] | None = None) -> None:
        super().__init__()
        self.init_head(len(weight[0]), len(weight), 0.0)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(weight))
            self.head.bias.zero_()
        self.feature_map_channels = len(weight[0])
        self.register_buffer("scale", torch.tensor(scale or [1.0, 2.0]))

    def forward_feature_map(self, x):
        return x * self.scale

    def pool_features(self, fmap):
        return fmap.mean((2, 3))

    def forward_features(self, x):
        return self.pool_features(self.forward_feature_map(x))


# ---- EAC -----------------------------------------------------------------------------------------------------------

def test_eac_loss_by_hand():
    # B=2 images, C=2 channels, 1x2 pixels; head W = [[1, -1], [2, 0]]; the map doubles the right column
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]],
                      [[[3.0, 0.0]], [[1.0, 1.0]]]])
    net = Stub([[1.0, -1.0], [2.0, 0.0]])
    step = EAC(lam=5.0, erase_p=0.0).step(net, x, torch.tensor([1, 0]), nn.CrossEntropyLoss(), epoch=0)
    # image 0: map c0 [1, 4], c1 [0, 2]: CAM k0 = c0 - c1 = [1, 2], k1 = 2 c0 = [2, 8]
    #   flipped image: c0 [2, 1] -> [2, 2], c1 [1, 0] -> [1, 0]: k0 [1, 2], k1 [4, 4]; flipped back k0 [2, 1], k1 [4, 4]
    #   squared differences: (1-2)^2 + (2-1)^2 + (2-4)^2 + (8-4)^2 = 1 + 1 + 4 + 16 = 22
    # image 1: map c0 [3, 0], c1 [1, 2]: k0 [2, -2], k1 [6, 0]
    #   flipped: c0 [0, 6], c1 [1, 2]: k0 [-1, 4], k1 [0, 12]; flipped back k0 [4, -1], k1 [12, 0]
    #   (2-4)^2 + (-2+1)^2 + (6-12)^2 + 0 = 4 + 1 + 36 = 41
    consistency = (22 + 41) / 8  # mean over 2 images x 2 classes x 2 pixels
    # logits: pooled map image 0 (2.5, 1) -> (1.5, 5); image 1 (1.5, 1.5) -> (0, 3); labels 1 and 0
    classification = (ce([1.5, 5.0], 1) + ce([0.0, 3.0], 0)) / 2
    assert step.logits.tolist() == [[1.5, 5.0], [0.0, 3.0]]
    assert step.loss.item() == pytest.approx(classification + 5 * consistency, rel=1e-6)
    assert step.loss.item() == pytest.approx(classification + 5 * 7.875, rel=1e-6)


def official_acloss(att_map1, att_map2, w, h):
    """EAC's src/utils.generate_flip_grid + src/loss.ACLoss, re-typed."""
    x_ = torch.arange(w).view(1, -1).expand(h, -1)
    y_ = torch.arange(h).view(-1, 1).expand(-1, w)
    grid = torch.stack([x_, y_], dim=0).float().unsqueeze(0).expand(1, -1, -1, -1).clone()
    grid[:, 0, :, :] = 2 * grid[:, 0, :, :] / (w - 1) - 1
    grid[:, 1, :, :] = 2 * grid[:, 1, :, :] / (h - 1) - 1
    grid[:, 0, :, :] = -grid[:, 0, :, :]
    flip_grid = grid.expand(att_map1.size(0), -1, -1, -1).permute(0, 2, 3, 1)
    flipped = F.grid_sample(att_map2, flip_grid, mode="bilinear", padding_mode="border", align_corners=True)
    return F.mse_loss(att_map1, flipped)


def test_eac_flip_and_cams_equal_the_official_grid_sample_and_fc_weights():
    torch.manual_seed(0)
    fmap, fmap_flip, weight = torch.randn(3, 16, 7, 7), torch.randn(3, 16, 7, 7), torch.randn(7, 16)
    official_hm = (fmap.unsqueeze(1) * weight.view(1, 7, 16, 1, 1)).sum(2)  # src/model.py
    ours = class_activation_maps(fmap, weight)
    assert torch.allclose(ours, official_hm, atol=1e-5)
    expected = official_acloss(ours, class_activation_maps(fmap_flip, weight), 7, 7)
    assert flip_consistency(ours, class_activation_maps(fmap_flip, weight)).item() == pytest.approx(expected.item(), rel=1e-5)


# ---- SCN -----------------------------------------------------------------------------------------------------------

def test_scn_rank_regularization_by_hand():
    alpha = torch.tensor([[0.9], [0.2], [0.6], [0.4]])
    # beta 0.7 of 4 images: int(2.8) = 2 high (0.9, 0.6: mean 0.75), 2 low (0.4, 0.2: mean 0.3)
    assert rank_regularization(alpha, 0.7, 0.15).item() == 0.0  # 0.15 - (0.75 - 0.3) < 0
    assert rank_regularization(alpha, 0.7, 0.5).item() == pytest.approx(0.5 - 0.45)
    # 3 images: int(2.1) = 2 high (0.9, 0.6: 0.75), 1 low (0.2): 0.6 - 0.55 = 0.05
    assert rank_regularization(alpha[:3], 0.7, 0.6).item() == pytest.approx(0.05)


def test_scn_relabels_where_the_top_probability_beats_the_label_by_the_margin():
    logits = torch.tensor([[2.0, 0.0, 0.0],            # the label is the top class: kept
                           [0.0, math.log(4.0), 0.0],  # softmax (1/6, 4/6, 1/6): 4/6 - 1/6 = 0.5 > 0.2 -> class 1
                           [0.0, math.log(1.5), 0.0]])  # (1, 1.5, 1)/3.5: 0.5/3.5 = 0.14 < 0.2: kept
    assert relabels(logits, torch.tensor([0, 0, 0]), 0.2).tolist() == [-1, 1, -1]


class Features(FERNet):
    """forward_features = the input rows themselves (B, 2); identity head."""

    def __init__(self) -> None:
        super().__init__()
        self.init_head(2, 2, 0.0)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward_features(self, x):
        return x


class Rows:
    """What SCN reads of a datamodule: the train split's targets."""

    def __init__(self, targets: list[int]) -> None:
        self.splits, self.train_kind, self.mix = {"train": (None, torch.tensor(targets))}, "index", None


def test_scn_step_by_hand_weights_logits_and_adds_the_rank_loss():
    ln3 = math.log(3.0)
    method = SCN(beta=0.7, margin_1=0.3, margin_2=0.2, relabel_epoch=2)
    net = SCNNet(Features())
    with torch.no_grad():  # alpha = sigmoid(first feature): sigmoid(ln 3) = 3/4, sigmoid(0) = 1/2, sigmoid(-ln 3) = 1/4
        net.alpha[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        net.alpha[0].bias.zero_()
    method.setup_fit(Rows([0, 1, 0, 1, 1]))
    x = torch.tensor([[ln3, 2.0], [0.0, 0.0], [-ln3, 4.0], [0.0, 1.0]])
    index = torch.tensor([0, 1, 2, 3])  # rows of the train split: labels 0, 1, 0, 1
    step = method.step(net, x, torch.tensor([9, 9, 9, 9]), nn.CrossEntropyLoss(), epoch=0, index=index)
    # logits = alpha * features: (0.75 ln3, 1.5), (0, 0), (-0.25 ln3, 1), (0, 0.5)
    logits = [[0.75 * ln3, 1.5], [0.0, 0.0], [-0.25 * ln3, 1.0], [0.0, 0.5]]
    assert torch.allclose(step.logits, torch.tensor(logits), atol=1e-6)
    # weights 0.75, 0.5, 0.25, 0.5: high (0.75, 0.5) mean 0.625, low (0.5, 0.25) mean 0.375: 0.3 - 0.25 = 0.05
    classification = (ce(logits[0], 0) + ce(logits[1], 1) + ce(logits[2], 0) + ce(logits[3], 1)) / 4
    assert step.loss.item() == pytest.approx(classification + 0.05, rel=1e-6)
    assert step.targets.tolist() == [0, 1, 0, 1]  # the table's labels, not the batch's
    assert method.labels.tolist() == [0, 1, 0, 1, 1]  # epoch 1 of relabel_epoch 2: nothing relabeled yet

    # the second epoch relabels: row 2's softmax (e^{-0.25 ln3}, e) / sum gives class 1 far above its label 0
    p = [math.exp(-0.25 * ln3), math.exp(1.0)]
    assert p[1] / sum(p) - p[0] / sum(p) > 0.2
    step = method.step(net, x, torch.zeros(4, dtype=torch.long), nn.CrossEntropyLoss(), epoch=1, index=index)
    # row 0: label 0 has (e^{0.75 ln3} = 2.28 vs e^{1.5} = 4.48): 0.66 - 0.34 = 0.32 > 0.2 -> 1 as well
    assert method.labels.tolist() == [1, 1, 1, 1, 1] and step.targets.tolist() == [0, 1, 0, 1]
    assert method.extra_state()["original"].tolist() == [0, 1, 0, 1, 1]


def test_scn_net_weights_the_heads_logits_by_its_importance():
    net = SCNNet(Features())
    with torch.no_grad():
        net.alpha[0].weight.copy_(torch.tensor([[0.5, -0.25]]))
        net.alpha[0].bias.zero_()
        net.body.head.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
    # f = (1, 2): alpha = sigmoid(0.5 - 0.5) = 1/2; head (3, 4) -> (1.5, 2)
    assert net(torch.tensor([[1.0, 2.0]])).tolist() == [[1.5, 2.0]]


# ---- DAN -----------------------------------------------------------------------------------------------------------

def test_dan_affinity_loss_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]])
    # squared distances to their own centres: |(1,0)-(0,0)|^2 = 1, |(0,2)-(1,1)|^2 = 2
    # centres' variance per dimension (unbiased, 3 classes): (0,1,2) -> 1, (0,1,-1) -> 1: sum 2
    # the 4 other entries of the 2x3 distance matrix count 1e-12 each (the official clamp)
    expected = (1 / 2 + 2 / 2 + 4e-12) / 2
    assert affinity_loss(features, torch.tensor([0, 1]), centers).item() == pytest.approx(expected, rel=1e-6)


def test_dan_partition_loss_by_hand():
    heads = torch.tensor([[[1.0, 2.0], [3.0, 2.0]]])  # 1 image, 2 heads, 2 channels
    # variance across the heads: channel 0 (1, 3) -> 2, channel 1 (2, 2) -> 0; mean 1: log(1 + 2 / 1)
    assert partition_loss(heads).item() == pytest.approx(math.log(3.0), rel=1e-6)
    assert partition_loss(heads[:, :1]).item() == 0.0  # one head: no partition loss


def test_dan_step_weights_its_three_losses():
    torch.manual_seed(0)
    method = DAN(num_head=2, affinity_weight=2.0, partition_weight=3.0)
    net = method.wrap(Stub([[1.0, -1.0], [2.0, 0.0], [0.5, 0.5]], scale=[1.0, 1.0]))
    x, y = torch.randn(4, 2, 2, 2), torch.tensor([0, 1, 2, 1])
    torch.manual_seed(1)
    step = method.step(net, x, y, nn.CrossEntropyLoss(), epoch=0)
    fmap = net.forward_feature_map(x)
    heads = net.attend(fmap)  # train mode: the same batch statistics again
    expected = (F.cross_entropy(net.forward_head(heads.sum(1)), y) + 2 * affinity_loss(fmap.mean((2, 3)), y, method.centers)
                + 3 * partition_loss(heads))
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-5)


class OfficialCrossAttentionHead(nn.Module):
    """yaoing/DAN networks/dan.py, re-typed (its 512 channels and 32-wide channel attention hard-coded)."""

    def __init__(self) -> None:
        super().__init__()
        self.sa = nn.Module()
        self.sa.conv1x1 = nn.Sequential(nn.Conv2d(512, 256, kernel_size=1), nn.BatchNorm2d(256))
        self.sa.conv_3x3 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=3, padding=1), nn.BatchNorm2d(512))
        self.sa.conv_1x3 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=(1, 3), padding=(0, 1)), nn.BatchNorm2d(512))
        self.sa.conv_3x1 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=(3, 1), padding=(1, 0)), nn.BatchNorm2d(512))
        self.ca = nn.Module()
        self.ca.gap = nn.AdaptiveAvgPool2d(1)
        self.ca.attention = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True),
                                          nn.Linear(32, 512), nn.Sigmoid())

    def forward(self, x):
        y = self.sa.conv1x1(x)
        y = torch.relu(self.sa.conv_3x3(y) + self.sa.conv_1x3(y) + self.sa.conv_3x1(y))
        sa = x * y.sum(dim=1, keepdim=True)
        sa = self.ca.gap(sa).view(sa.size(0), -1)
        return sa * self.ca.attention(sa)


def official_affinity(x, labels, centers):
    """yaoing/DAN rafdb.py AffinityLoss.forward on a (B, C, h, w) map, re-typed."""
    x = F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
    batch_size, num_class = x.size(0), centers.size(0)
    distmat = torch.pow(x, 2).sum(dim=1, keepdim=True).expand(batch_size, num_class) + \
        torch.pow(centers, 2).sum(dim=1, keepdim=True).expand(num_class, batch_size).t()
    distmat.addmm_(x, centers.t(), beta=1, alpha=-2)
    classes = torch.arange(num_class).long()
    mask = labels.unsqueeze(1).expand(batch_size, num_class).eq(classes.expand(batch_size, num_class))
    dist = distmat * mask.float() / centers.var(dim=0).sum()
    return dist.clamp(min=1e-12, max=1e+12).sum() / batch_size


def test_dan_head_and_losses_equal_the_official_code():
    torch.manual_seed(0)
    ours, official = CrossAttentionHead(512, 32), OfficialCrossAttentionHead()
    official.load_state_dict(ours.state_dict())  # the same parameter names and shapes
    x = torch.randn(3, 512, 2, 2)
    for mode in (True, False):
        ours.train(mode), official.train(mode)
        assert torch.allclose(ours(x), official(x), atol=1e-6)
    centers, labels = torch.randn(7, 512), torch.tensor([0, 3, 6])
    assert affinity_loss(x.mean((2, 3)), labels, centers).item() == pytest.approx(
        official_affinity(x, labels, centers).item(), rel=1e-5)
    heads = torch.randn(3, 4, 512)
    official_partition = torch.log(1 + 4 / (heads.var(dim=1).mean() + sys.float_info.epsilon))
    assert partition_loss(heads).item() == pytest.approx(official_partition.item(), rel=1e-6)
