"""The zoo against its references: torchvision's builders, the reports' code and the papers' parameter counts.

torchvision models are built on the meta device (architecture only; no weights are created or downloaded),
then given our weights, so equal outputs show the same forward function, not just the same sizes.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from ferlab.models import create_model
from ferlab.models.cliquenet import CliqueBlock, cliquenet
from ferlab.models.deep_emotion import deep_emotion
from ferlab.models.resnet import Bottleneck, resnext18_fer


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(build, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build(*args, **kwargs)


@pytest.mark.parametrize("name, count", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                         ("resnext50_32x4d", 25_028_904), ("vgg19_bn", 143_678_248)])
def test_imagenet_shape_parameter_counts(name: str, count: int):
    ours = on_meta(create_model, name, in_chans=3, num_classes=1000)
    assert n_params(ours) == count == n_params(on_meta(getattr(torchvision.models, name)))


# the recipes' networks as their code builds them: microsoft/FERPlus VGG13 (1x64x64, 8 classes; conv biases, no BN),
# usef-kh/fer Vgg (1x40x40 crops, 7 classes; 512x2x2 into lin1)
@pytest.mark.parametrize("name, classes, side, count", [("vgg13_barsoum", 8, 64, 8_757_704),
                                                        ("vgg_khaireddin", 7, 40, 29_890_759)])
def test_recipe_networks_have_their_codes_parameter_count(name: str, classes: int, side: int, count: int):
    net = create_model(name, in_chans=1, num_classes=classes).eval()
    assert n_params(net) == count
    with torch.no_grad():  # the pooled grid is already pool_size x pool_size at their input size: pooling is identity
        assert net.stages(torch.zeros(1, 1, side, side)).shape[-1] == net.pool_size


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19"])
def test_vgg_variants_have_torchvision_layer_shapes(name: str):
    ours, ref = on_meta(create_model, name), on_meta(getattr(torchvision.models, name))
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "vgg11_bn"])
def test_same_forward_as_torchvision_with_the_same_weights(name: str):
    torch.manual_seed(0)
    ours = create_model(name, in_chans=3, num_classes=10).eval()
    ref = on_meta(getattr(torchvision.models, name), num_classes=10).to_empty(device="cpu").eval()
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert [v.shape for v in mine.values()] == [v.shape for v in theirs.values()]  # same layers, same order
    ref.load_state_dict(dict(zip(theirs, mine.values(), strict=True)))
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


class PublicDeepEmotion(nn.Module):
    """The public Deep-Emotion reimplementation report 003 used (48x48, 7 classes), dropout obeying eval."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 10, 3), nn.Conv2d(10, 10, 3)
        self.conv3, self.conv4 = nn.Conv2d(10, 10, 3), nn.Conv2d(10, 10, 3)
        self.pool2, self.pool4, self.norm = nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2), nn.BatchNorm2d(10)
        self.fc1, self.fc2 = nn.Linear(810, 50), nn.Linear(50, 7)
        self.localization = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=7), nn.MaxPool2d(2, stride=2), nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5), nn.MaxPool2d(2, stride=2), nn.ReLU(True),
        )
        self.fc_loc = nn.Sequential(nn.Linear(640, 32), nn.ReLU(True), nn.Linear(32, 3 * 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.fc_loc(self.localization(x).view(-1, 640)).view(-1, 2, 3)
        x = F.grid_sample(x, F.affine_grid(theta, x.size(), align_corners=False), align_corners=False)
        out = self.pool2(self.conv2(F.relu(self.conv1(x))))
        out = self.norm(self.conv4(F.relu(self.conv3(F.relu(out)))))
        out = F.dropout(F.relu(self.pool4(out)), training=self.training)  # was F.dropout(out): always on
        return self.fc2(F.relu(self.fc1(out.view(-1, 810))))


DEEP_EMOTION_NAMES = {"localization": "localization", "fc_loc": "fc_loc", "conv1": "features.0",
                      "conv2": "features.2", "conv3": "features.5", "conv4": "features.7",
                      "norm": "features.8", "fc1": "fc.0", "fc2": "head"}


def test_deep_emotion_matches_the_public_reimplementation():
    torch.manual_seed(0)
    ours = deep_emotion(in_chans=1, num_classes=7, input_size=48)
    assert n_params(ours) == 66_877
    ref = PublicDeepEmotion()
    mine = ours.state_dict()
    ref.load_state_dict({k: mine[DEEP_EMOTION_NAMES[k.split(".")[0]] + k[len(k.split(".")[0]):]]
                         for k in ref.state_dict()})
    x = torch.randn(3, 1, 48, 48)
    torch.testing.assert_close(ours.stn(x), x, atol=1e-5, rtol=0)  # the transformer starts as the identity
    ours.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
        assert torch.equal(ours(x), ours(x))  # dropout is off in eval mode
    ours.train()
    with torch.no_grad():
        assert not torch.equal(ours(x), ours(x))  # and on in training


@pytest.mark.parametrize("side, fc_in, loc_in", [(48, 810, 640), (64, 1690, 1440), (96, 4410, 4000)])
def test_deep_emotion_sizes_its_fc_layers_from_the_input(side: int, fc_in: int, loc_in: int):
    net = deep_emotion(in_chans=1, num_classes=7, input_size=side)
    assert (net.fc[0].in_features, net.fc_loc[0].in_features) == (fc_in, loc_in)
    assert net(torch.randn(2, 1, side, side)).shape == (2, 7)


class ReportResNeXtBlock(nn.Module):
    """Report 000's ResNeXtBlock, LazyConv2d/LazyBatchNorm2d written with explicit input channels."""

    def __init__(self, cin: int, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False,
                 strides: int = 1) -> None:
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = nn.Conv2d(cin, bot_channels, kernel_size=1, stride=1)
        self.conv2 = nn.Conv2d(bot_channels, bot_channels, kernel_size=3, stride=strides, padding=1,
                               groups=bot_channels // groups)
        self.conv3 = nn.Conv2d(bot_channels, num_channels, kernel_size=1, stride=1)
        self.bn1, self.bn2, self.bn3 = (nn.BatchNorm2d(c) for c in (bot_channels, bot_channels, num_channels))
        self.conv4 = nn.Conv2d(cin, num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn4 = nn.BatchNorm2d(num_channels) if use_1x1conv else None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.bn4(self.conv4(X))
        return F.relu(Y + X)


def report_resnext(arch: list[tuple[int, int]], in_chans: int = 3, num_classes: int = 5) -> nn.Sequential:
    """Report 000's ResNext(arch): b1 stem, `block()` per stage (its if/elif chain verbatim), linear head."""
    layers, cin = [nn.Conv2d(in_chans, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for i, (num_resnext, num_channels) in enumerate(arch):
        for j in range(num_resnext):
            if j == 0 and i > 0:
                layers.append(ReportResNeXtBlock(cin, num_channels, 32, 1, use_1x1conv=True, strides=2))
            elif j == num_resnext - 2:
                layers += [ReportResNeXtBlock(cin, num_channels, 32, 1), nn.Dropout(0.2)]
            elif j == num_resnext - 1:
                layers += [ReportResNeXtBlock(cin, num_channels, 32, 1), nn.Dropout(0.4)]
            cin = num_channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(cin, num_classes))


ARCHS = {"3": [(2, 64), (2, 128), (2, 256)], "4": [(2, 64), (2, 128), (2, 256), (2, 512)],
         "5": [(2, 64), (2, 128), (2, 256), (2, 512), (2, 512)]}  # report 000's depth ablation


@pytest.mark.parametrize("stages", ARCHS)
def test_resnext18_fer_has_report_000s_layers(stages: str):
    arch = ARCHS[stages]
    ours = on_meta(resnext18_fer, in_chans=3, num_classes=5, arch=arch)
    ref = on_meta(report_resnext, arch=arch)
    conv_biases = sum(m.out_channels for m in ref.modules() if isinstance(m, nn.Conv2d))
    assert n_params(ref) == n_params(ours) + conv_biases  # the report's convs have biases before BN; ours not
    assert [b.conv2.groups for b in ours.modules() if isinstance(b, Bottleneck)] == [c // 32 for _, c in arch
                                                                                      for _ in range(2)]
    assert [p.p for p in ours.stages.modules() if isinstance(p, nn.Dropout)] == [0.2, 0.4] * len(arch)


def test_resnext18_fer_computes_what_report_000s_code_computes():
    torch.manual_seed(0)
    ours, ref = resnext18_fer(in_chans=3, num_classes=5).eval(), report_resnext(ARCHS["3"]).eval()
    blocks = [m for m in ours.modules() if isinstance(m, Bottleneck)]
    ref_blocks = [m for m in ref.modules() if isinstance(m, ReportResNeXtBlock)]
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.zero_()
        for a, b in ((ours.stem[0], ref[0]), (ours.stem[1], ref[1]), (ours.head, ref[-1])):
            _copy(a, b)
        for b, r in zip(blocks, ref_blocks, strict=True):
            pairs = [(n, n) for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
            pairs += [("downsample.0", "conv4"), ("downsample.1", "bn4")] if r.conv4 else []
            for a, c in pairs:
                _copy(b.get_submodule(a), r.get_submodule(c))
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(ours(x), ref(x))


def _copy(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters and buffers of the same names (a bias the source lacks stays as it is)."""
    own = src.state_dict()
    dst.load_state_dict({k: own.get(k, v) for k, v in dst.state_dict().items()})


def test_cliquenet_cifar_configuration_has_the_authors_parameter_count():
    # Authors' CIFAR net (k=36, T=12, no bottleneck/compression/attention), counted from their TF code:
    # stem 3x3 conv 3->64 (1,728); per block W_0i (4 x c0*36*9) + W_ji (12 x 36*36*9) + one BN (gamma, beta)
    # per layer and stage over its concatenated input + BN of the pooled block feature; transitions BN +
    # 1x1 conv 144->144; FC 784->10. Total 935,994, the paper's "0.94M".
    net = on_meta(cliquenet, in_chans=3, num_classes=10, stem="cifar", layers=4, channels=36, attention=False)
    assert n_params(net) == 935_994
    assert net.num_features == 784  # (64 + 144) + (144 + 144) + (144 + 144)


def test_cliquenet_report_004_head_concatenates_964_features():
    net = on_meta(cliquenet, in_chans=1, num_classes=8)  # report 004's `tf.reshape(out, [-1, 964])`
    assert net.num_features == 964


def test_cliquenet_stage_two_reuses_stage_one_weights():
    one, two = (on_meta(cliquenet, in_chans=1, num_classes=8, loops=n) for n in (1, 2))
    weights = sum(p.numel() for b in one.blocks for p in [*b.w_in, *b.w_peer])
    assert weights == sum(5 * c0 * 36 * 9 + 20 * 36 * 36 * 9 for c0 in (64, 180, 180))  # n + n(n-1) filters
    assert n_params(two) - n_params(one) == 3 * 5 * 2 * 4 * 36  # a second pass adds only its BN (gamma, beta)


def test_clique_block_follows_the_alternate_update_rule():
    """Our concatenated-weight convs against the paper's sums over per-edge filters W_ji."""
    torch.manual_seed(0)
    n, k = 3, 2
    block = CliqueBlock(3, layers=n, channels=k, loops=1, norm="none", act="relu").eval()
    x0 = torch.randn(2, 3, 8, 8)

    def w(j: int, i: int) -> torch.Tensor:  # filter from layer j (0 = block input) to layer i (1..n)
        if j == 0:
            return block.w_in[i - 1]
        slot = j - 1 if j < i else j - 2  # layers other than i, ascending
        return block.w_peer[i - 1][:, slot * k:(slot + 1) * k]

    def f(parts: dict[int, torch.Tensor], i: int) -> torch.Tensor:
        return sum(F.conv2d(F.relu(t), w(j, i), padding=1) for j, t in parts.items())

    xs = {0: x0}
    for i in range(1, n + 1):  # stage I: from the input and all earlier layers
        xs[i] = f({j: xs[j] for j in range(i)}, i)
    for i in range(1, n + 1):  # stage II: from the latest versions of all other layers
        xs[i] = f({j: xs[j] for j in range(1, n + 1) if j != i}, i)
    feature, transit = block(x0)
    torch.testing.assert_close(transit, torch.cat([xs[i] for i in range(1, n + 1)], 1))
    torch.testing.assert_close(feature, torch.cat([x0, transit], 1))
