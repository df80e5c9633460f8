"""Face-recognition backbones from the files the papers publish: each file is made here, with random weights, in
its real key layout (wrappers, `module.` prefixes, the foreign identity classifier), and the loaded ferlab network's
features equal the original repository's architecture (re-typed below) on the same weights, max abs diff <= 1e-5.

References, as published: TreB1eN/InsightFace_Pytorch `model.py` (IR `Backbone`, `MobileFaceNet`), which POSTER
(zczcwh/POSTER `models/ir50.py`, `models/mobilefacenet.py` with the GDC head as `output_layer`) and POSTER++
(Talented-Q/POSTER_V2, the body split as body1/body2/body3) copy; torchvision's resnet18 for the MS-Celeb-1M
ResNet-18 (`resnet18_msceleb.pth`, loaded by DAN strictly into torchvision's resnet18, by SCN with `module.` keys).
"""

from __future__ import annotations

import re
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from ferlab.errors import FerlabError
from ferlab.models import create_model
from tests.conftest import compose_cfg

ATOL = 1e-5


# ---- the reference architectures, re-typed from InsightFace_Pytorch's model.py (forward up to the embedding,
# before its l2_norm) ------------------------------------------------------------------------------------------


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class SEModule(nn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class bottleneck_IR(nn.Module):  # noqa: N801 (the reference's names)
    def __init__(self, in_channel, depth, stride, se=False):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
                  nn.PReLU(depth), nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False), nn.BatchNorm2d(depth)]
        self.res_layer = nn.Sequential(*layers, *([SEModule(depth, 16)] if se else []))  # bottleneck_IR_SE

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


Bottleneck = namedtuple("Block", ["in_channel", "depth", "stride"])


def get_block(in_channel, depth, num_units, stride=2):
    return [Bottleneck(in_channel, depth, stride)] + [Bottleneck(depth, depth, 1) for _ in range(num_units - 1)]


def get_blocks(num_layers):
    units = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}[num_layers]
    return [get_block(64, 64, units[0]), get_block(64, 128, units[1]), get_block(128, 256, units[2]),
            get_block(256, 512, units[3])]


class Backbone(nn.Module):
    def __init__(self, num_layers, drop_ratio, mode="ir"):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))
        self.body = nn.Sequential(*[bottleneck_IR(b.in_channel, b.depth, b.stride, se=mode == "ir_se")
                                    for block in get_blocks(num_layers) for b in block])

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


class PosterV2Backbone(nn.Module):
    """POSTER++'s ir50.py: the same units as body1 (3), body2 (4), body3 (14); forward returns the three maps."""

    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.output_layer = Backbone(50, 0.0).output_layer
        for i, block in enumerate(get_blocks(50)[:3], 1):
            setattr(self, f"body{i}", nn.Sequential(*[bottleneck_IR(b.in_channel, b.depth, b.stride) for b in block]))

    def forward(self, x):
        x1 = self.body1(self.input_layer(x))
        x2 = self.body2(x1)
        return x1, x2, self.body3(x2)


class Conv_block(nn.Module):  # noqa: N801
    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_channels=out_c, kernel_size=kernel, groups=groups, stride=stride,
                              padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x):
        return self.prelu(self.bn(self.conv(x)))


class Linear_block(nn.Module):  # noqa: N801
    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_channels=out_c, kernel_size=kernel, groups=groups, stride=stride,
                              padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x):
        return self.bn(self.conv(x))


class Depth_Wise(nn.Module):  # noqa: N801
    def __init__(self, in_c, out_c, residual=False, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1):
        super().__init__()
        self.conv = Conv_block(in_c, out_c=groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.conv_dw = Conv_block(groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride)
        self.project = Linear_block(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.residual = residual

    def forward(self, x):
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    def __init__(self, c, num_block, groups, kernel=(3, 3), stride=(1, 1), padding=(1, 1)):
        super().__init__()
        self.model = nn.Sequential(*[Depth_Wise(c, c, residual=True, kernel=kernel, padding=padding, stride=stride,
                                                groups=groups) for _ in range(num_block)])

    def forward(self, x):
        return self.model(x)


class MobileFaceNet(nn.Module):
    """InsightFace_Pytorch's MobileFaceNet(embedding_size); `poster=True`: POSTER's copy, the GDC head (conv_6_dw,
    flatten, linear, bn) gathered in `output_layer` (its `GDC` class)."""

    def __init__(self, embedding_size, poster=False):
        super().__init__()
        self.conv1 = Conv_block(3, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
        self.conv2_dw = Conv_block(64, 64, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64)
        self.conv_23 = Depth_Wise(64, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128)
        self.conv_3 = Residual(64, num_block=4, groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
        self.conv_34 = Depth_Wise(64, 128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256)
        self.conv_4 = Residual(128, num_block=6, groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
        self.conv_45 = Depth_Wise(128, 128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512)
        self.conv_5 = Residual(128, num_block=2, groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
        self.conv_6_sep = Conv_block(128, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        gdc = nn.Module() if poster else self
        gdc.conv_6_dw = Linear_block(512, 512, groups=512, kernel=(7, 7), stride=(1, 1), padding=(0, 0))
        gdc.conv_6_flatten = Flatten()
        gdc.linear = nn.Linear(512, embedding_size, bias=False)
        gdc.bn = nn.BatchNorm1d(embedding_size)
        if poster:
            self.output_layer = gdc

    def feature_map(self, x):
        for name in ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5", "conv_6_sep"):
            x = getattr(self, name)(x)
        return x

    def forward(self, x):
        g = getattr(self, "output_layer", self)
        return g.bn(g.linear(g.conv_6_flatten(g.conv_6_dw(self.feature_map(x)))))


# ---- files in the published layouts ---------------------------------------------------------------------------


def calibrated(net: nn.Module, seed: int = 0) -> nn.Module:
    """`net` in eval mode with random weights, batch-norm statistics and affine parameters, and PReLU slopes: every
    tensor of the saved file differs from a fresh network's, so a tensor that fails to load shows in the output."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.running_var, 0.5, 2.0), nn.init.normal_(m.running_mean, 0.0, 0.1)
            nn.init.uniform_(m.weight, 0.5, 1.5), nn.init.normal_(m.bias, 0.0, 0.1)
            m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, ())))
        elif isinstance(m, nn.PReLU):
            nn.init.uniform_(m.weight, 0.0, 0.5)
    return net.eval()


def save(state: dict, path: Path, *, prefix: str = "", wrapper: str | None = None, **extra) -> Path:
    """torch.save the state dict as the papers' files hold it: keys prefixed, under a wrapper key, with extras."""
    state = {prefix + k: v for k, v in state.items()}
    torch.save({wrapper: state, **extra} if wrapper else state, path)
    return path


def features(net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.forward_features(x)


def assert_parity(mine: torch.Tensor, ref: torch.Tensor) -> None:
    assert mine.shape == ref.shape and (mine - ref).abs().max().item() <= ATOL


# ---- MS-Celeb-1M ResNet-18 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dan", "scn"])
def test_msceleb_resnet18_loads_into_resnet18_with_torchvisions_features(layout, tmp_path):
    """DAN/RUL's copy: {"state_dict": torchvision keys, fc 1000 wide}; SCN's: `module.` keys, another fc width and
    training state beside. The identity classifier becomes the head, re-initialised for 7 classes; gray input
    through summed RGB kernels."""
    classes, prefix = (1000, "") if layout == "dan" else (12666, "module.")
    ref = calibrated(torchvision.models.resnet18(num_classes=classes))
    path = save(ref.state_dict(), tmp_path / "resnet18_msceleb.pth", prefix=prefix, wrapper="state_dict",
                epoch=40, best_prec1=torch.tensor(99.0))
    net = create_model("resnet18", in_chans=3, num_classes=7, pretrained=str(path)).eval()
    report = net.load_report
    assert report.loaded == report.total - 2 and list(report.skipped) == ["head"]
    assert report.skipped["head"] == f"head.weight is 7x512, {classes}x512 in the source (as fc.weight)"
    x = torch.rand(2, 3, 64, 64)
    body = nn.Sequential(*list(ref.children())[:-1])  # torchvision without its fc, as SCN's Res18Feature
    with torch.no_grad():
        assert_parity(features(net, x), body(x).flatten(1))
        gray = create_model("resnet18", in_chans=1, num_classes=7, pretrained=str(path)).eval()
        assert gray.load_report.adapted == ["stem.0.weight adapted from 3 to 1 input channels"]
        torch.testing.assert_close(features(gray, x[:, :1]), body(x[:, :1].expand(-1, 3, -1, -1)).flatten(1),
                                   rtol=1e-4, atol=ATOL)  # summed kernels: the same sums in another order


# ---- IR-50 ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ir_file(tmp_path_factory) -> tuple[Backbone, Path]:
    """InsightFace_Pytorch's IR-50 (model_ir50.pth layout: a bare state dict, no classifier)."""
    ref = calibrated(Backbone(50, 0.6, "ir"))
    return ref, save(ref.state_dict(), tmp_path_factory.mktemp("ir") / "model_ir50.pth")


def test_ir50_file_gives_the_insightface_backbones_map_and_embedding(ir_file):
    """At the 112x112 the file was made for: the 7x7x512 map (cam_layer) and the 512-d output_layer embedding."""
    ref, path = ir_file
    net = create_model("ir50", in_chans=3, num_classes=7, neck="embedding", pretrained=str(path)).eval()
    report = net.load_report
    assert report.loaded == report.total - 2 and report.skipped == {"head": "head.weight (7x512) not in the source"}
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        fmap, ref_map = net.forward_feature_map(x), ref.body(ref.input_layer(x))
        assert fmap.shape == (1, 512, 7, 7) and net.feature_map_channels == 512
        assert_parity(fmap, ref_map)
        assert_parity(net.pool_features(fmap), ref.output_layer(ref_map))
        assert torch.equal(net.forward_features(x), net.pool_features(fmap))


def test_ir_se_file_with_wrapper_and_module_prefix_loads(tmp_path):
    """model_ir_se50.pth's SE units, saved from DataParallel under "state_dict": the body's map at 32 px, the
    embedding neck on a 7x7 map (end to end at 112 px: the plain IR test)."""
    ref = calibrated(Backbone(50, 0.0, "ir_se"))
    path = save(ref.state_dict(), tmp_path / "model_ir_se50.pth", prefix="module.", wrapper="state_dict")
    net = create_model("ir50", num_classes=7, mode="ir_se", neck="embedding", pretrained=str(path)).eval()
    assert net.load_report.loaded == net.load_report.total - 2
    x, seven = torch.rand(2, 3, 32, 32), torch.randn(2, 512, 7, 7)
    with torch.no_grad():
        ref_map = ref.body(ref.input_layer(x))
        assert_parity(net.forward_feature_map(x), ref_map)
        assert_parity(net.pool_features(seven), ref.output_layer(seven))


def test_poster_v2_split_body_loads_into_three_stages_and_a_full_file_drops_stage_four(ir_file, tmp_path):
    """POSTER++'s body1/body2/body3 file into num_stages=3 (its 14x14x256 map at 112 px; its output_layer has no
    place with neck=avg), into the default 4 stages: one line saying so; InsightFace_Pytorch's 4-stage file into
    3 stages: stage 4 dropped, reported."""
    ref = calibrated(PosterV2Backbone())
    path = save(ref.state_dict(), tmp_path / "ir50.pth")
    net = create_model("ir50", num_classes=7, num_stages=3, neck="avg", pretrained=str(path)).eval()
    assert net.load_report.dropped == {"output_layer": "12 tensors, no embedding neck in this network"}
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert_parity(net.forward_feature_map(x), ref(x)[2])
    with pytest.raises(FerlabError, match=r"body.21.shortcut_layer.0.weight \(512x256x1x1\) not in the source; .*"
                                          r"the file has 3 stages: set model.num_stages=3$"):
        create_model("ir50", num_classes=7, neck="avg", pretrained=str(path))
    full = create_model("ir50", num_classes=7, num_stages=3, neck="embedding", pretrained=str(ir_file[1]))
    assert full.load_report.dropped == {
        f"body.{i}": f"{n} tensors, not used by this network" for i, n in ((21, 19), (22, 13), (23, 13))}
    assert set(full.load_report.skipped) == {"neck", "head"}  # 256 channels here, 512 in the file


# ---- MobileFaceNet --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["insightface", "poster"])
def test_mobilefacenet_file_gives_the_references_map_and_embedding(layout, tmp_path):
    """InsightFace_Pytorch's model_mobilefacenet.pth (bare, GDC at the top level, 512-d) and POSTER's
    mobilefacenet_model_best.pth.tar ({"state_dict": ...}, GDC under output_layer, 136-d landmark head)."""
    size, name = (512, "model_mobilefacenet.pth") if layout == "insightface" else (136, "mobilefacenet_model_best.pth.tar")
    ref = calibrated(MobileFaceNet(size, poster=layout == "poster"))
    path = save(ref.state_dict(), tmp_path / name, wrapper="state_dict" if layout == "poster" else None)
    net = create_model("mobilefacenet", num_classes=7, neck="embedding", embedding_size=size,
                       pretrained=str(path)).eval()
    assert net.load_report.loaded == net.load_report.total - 2 and list(net.load_report.skipped) == ["head"]
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        fmap = net.forward_feature_map(x)
        assert_parity(fmap, ref.feature_map(x))
        assert_parity(net.pool_features(fmap), ref(x))
    if layout == "poster":  # the default 512-d embedding: the 136-d landmark head does not fit, re-initialised
        default = create_model("mobilefacenet", num_classes=7, neck="embedding", pretrained=str(path))
        assert default.load_report.skipped["neck"] == "neck.2.weight is 512x512, 136x512 in the source (as " \
                                                      "output_layer.linear.weight)"


# ---- misfits, the FERNet surface, the config route -------------------------------------------------------------


def test_a_file_of_another_face_backbone_is_one_line_naming_keys_shapes_and_the_right_model(ir_file, tmp_path):
    with pytest.raises(FerlabError) as err:
        create_model("mobilefacenet", num_classes=7, pretrained=str(ir_file[1]))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{ir_file[1]} does not fit MobileFaceNet: ")
    assert "body.conv1.conv.weight (64x3x3x3) not in the source" in message
    assert "source tensor input_layer.0.weight (64x3x3x3) has no place here" in message
    assert message.endswith("more); the file looks like model=ir50 (insightface IR layout)")
    mfn = save(calibrated(MobileFaceNet(512)).state_dict(), tmp_path / "mfn.pth")
    with pytest.raises(FerlabError, match=r"mfn.pth does not fit IRNet: .* the file looks like model=mobilefacenet"):
        create_model("ir50", num_classes=7, num_stages=1, pretrained=str(mfn))


@pytest.mark.parametrize("name, kwargs, words", [
    ("ir50", dict(num_layers=34), "num_layers=34 is not one of: 50, 100, 152"),
    ("ir50", dict(num_stages=0), "num_stages=0 must be in 1..4"), ("ir50", dict(mode="se"), "mode='se' is not one of"),
    ("mobilefacenet", dict(neck="gdc"), "neck='gdc' is not one of: avg, embedding")])
def test_bad_arguments_are_one_line(name, kwargs, words):
    with pytest.raises(FerlabError, match=re.escape(f"model argument {words}")):
        create_model(name, in_chans=1, num_classes=7, **kwargs)


@pytest.mark.parametrize("name, kwargs, width", [("ir50", dict(neck="embedding", embedding_size=64), 64), ("ir50", dict(neck="avg"), 512),
                                                 ("mobilefacenet", dict(neck="embedding", embedding_size=128), 128),
                                                 ("mobilefacenet", dict(neck="avg"), 512)])
def test_feature_map_surface(name, kwargs, width):
    """forward_features == pool_features(forward_feature_map), whose output is cam_layer's, feature_map_channels
    wide; neck=avg pools globally. 48x48 gray input (the maps are 3x3)."""
    torch.manual_seed(0)
    net = create_model(name, in_chans=1, num_classes=7, **kwargs).eval()
    seen = {}
    net.cam_layer.register_forward_hook(lambda m, i, out: seen.setdefault("cam", out))
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        fmap = net.forward_feature_map(x)
        assert torch.equal(seen["cam"], fmap) and fmap.shape == (2, net.feature_map_channels, 3, 3)
        assert torch.equal(net.forward_features(x), net.pool_features(fmap))
    assert net.num_features == width == net.head.in_features
    if kwargs.get("neck") == "avg":
        assert torch.allclose(net.pool_features(fmap), fmap.mean((2, 3)))


def test_the_config_route_stores_the_load_report_for_metrics_json(tmp_path):
    """`ferlab train model=mobilefacenet model.pretrained=<file>` on gray 48x48 data: built through Hydra, the
    report (stem adapted, head re-initialised, the GDC dropped by the default neck=avg) is what metrics.json stores
    under weights.pretrained."""
    from hydra.utils import instantiate

    from ferlab.tasks.train import load_reports, model_config

    path = save(calibrated(MobileFaceNet(512)).state_dict(), tmp_path / "model_mobilefacenet.pth")
    cfg = compose_cfg(tmp_path, ["model=mobilefacenet", f"model.pretrained={path}"])
    reports = load_reports(instantiate(model_config(cfg.model)), cfg)  # as train.build makes the net
    assert reports["pretrained"]["adapted"] == ["body.conv1.conv.weight adapted from 3 to 1 input channels"]
    assert list(reports["pretrained"]["skipped"]) == ["head"] and reports["pretrained"]["source"] == str(path)
    assert reports["pretrained"]["dropped"] == {
        "conv_6_dw, linear, bn": "12 tensors, no embedding neck in this network"}


# ---- timm files -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enet() -> nn.Module:
    """hsemotion's recipe on timm's tiny test network: the classifier replaced by nn.Sequential(nn.Linear(., 8))."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet")
    model.classifier = nn.Sequential(nn.Linear(model.classifier.in_features, 8))
    return model.eval()


@pytest.mark.parametrize("wrapped", [False, True])
def test_timm_file_with_a_sequential_classifier_loads_whole(enet, wrapped, tmp_path):
    """hsemotion's AffectNet-8 model converted to a state dict (classifier.0.*), bare or as {"model": module.*}:
    8 classes keep its classifier as the head (same logits); 7 re-initialise it."""
    path = save(enet.state_dict(), tmp_path / "enet_b2_8.pth", prefix="module." if wrapped else "",
                wrapper="model" if wrapped else None)
    net = create_model("timm", name="test_efficientnet", num_classes=8, pretrained=str(path)).eval()
    assert net.load_report.loaded == net.load_report.total and not net.load_report.skipped
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_parity(net(x), enet(x))
    seven = create_model("timm", name="test_efficientnet", num_classes=7, pretrained=str(path))
    assert seven.load_report.skipped == {"head": "7 classes here, 8 in the source"}


def test_timm_file_without_a_classifier_loads_its_body(enet, tmp_path):
    """hsemotion's VGGFace2 state_vggface2_enet*.pt: saved with classifier = Identity, so no classifier keys (and
    here without batch norm counters, as files of PyTorch < 0.4.1: not needed, not counted)."""
    body = {k: v for k, v in enet.state_dict().items() if not k.startswith("classifier.")
            and not k.endswith("num_batches_tracked")}
    path = save(body, tmp_path / "state_vggface2_enet0.pt")
    net = create_model("timm", name="test_efficientnet", in_chans=1, num_classes=1000, pretrained=str(path)).eval()
    assert net.load_report.skipped == {"head": "the source has no classifier"}
    assert net.load_report.loaded == net.load_report.total - 2 == len(body)
    assert net.load_report.adapted == ["conv_stem adapted from 3 to 1 input channels"]
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = enet.forward_head(enet.forward_features(x.expand(-1, 3, -1, -1)), pre_logits=True)
        torch.testing.assert_close(net.forward_features(x), expected, rtol=1e-4, atol=ATOL)


def test_a_pickled_whole_model_is_one_line_whose_conversion_works(enet, tmp_path):
    """hsemotion's enet_b2_8.pt is torch.save(model): refused (weights-only), with the command that converts it."""
    torch.save(enet, tmp_path / "enet_b2_8.pt")
    with pytest.raises(FerlabError) as err:
        create_model("timm", name="test_efficientnet", num_classes=8, pretrained=str(tmp_path / "enet_b2_8.pt"))
    message = str(err.value)
    assert "\n" not in message and "is a pickled Python object (timm.models.efficientnet.EfficientNet)" in message
    code, target = re.search(r'python -c "(.*)" and set model.pretrained=(\S+)$', message).groups()
    exec(code, {})  # what the user runs, once, on a file they trust
    net = create_model("timm", name="test_efficientnet", num_classes=8, pretrained=target).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_parity(net(x), enet(x))


@pytest.mark.parametrize("name, kwargs, fmt", [
    ("ir50", dict(num_stages=2, neck="embedding", embedding_size=64), "torchscript"),
    ("mobilefacenet", dict(neck="embedding"), "torchscript"), ("mobilefacenet", dict(neck="embedding"), "onnx")])
def test_embedding_necks_export_at_112_px_with_parity(name, kwargs, fmt, tmp_path):
    """The embedding necks on 112x112 RGB faces (maps 28x28 and 7x7 pooled to 7x7) export with a dynamic batch;
    the default neck=avg exports with the zoo at 48 px (tests/test_export.py)."""
    from ferlab.checkpoints.restore import Restored
    from ferlab.infer.export import export

    torch.manual_seed(0)
    net = create_model(name, in_chans=3, num_classes=7, **kwargs).eval()
    restored = Restored(net, {"model": {}}, [f"c{i}" for i in range(7)], 3, 112, [0.5] * 3, [0.5] * 3, Path("x.ckpt"))
    result = export(restored, fmt, tmp_path / "net", batches=(1, 2))
    assert result.max_abs_diff <= 1e-4 and (tmp_path / "net").is_file()
