"""model.pretrained: torchvision-made weight files load key for key into ferlab's networks (same outputs, gray input by
summed RGB kernels), heads and stems that do not fit are re-initialised and reported, wrong files fail in one line,
and `imagenet` works from the torch hub cache alone and names the file to put there when it is empty offline.

The weight files are made here from torchvision's own constructors; nothing is downloaded.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from ferlab.errors import FerlabError
from ferlab.models import create_model
from ferlab.models.pretrained import adapt_input_conv, load_weights

FIRST_CONV = {"resnet18": "stem.0.weight", "vgg11_bn": "stages.0.convs.0.weight"}


@pytest.fixture(scope="module")
def tv(tmp_path_factory) -> Iterator[dict[str, tuple[nn.Module, Path]]]:
    """name -> (torchvision's network in eval mode, its state dict saved as torchvision saves one)."""
    folder, out = tmp_path_factory.mktemp("torchvision"), {}
    for name in FIRST_CONV:
        torch.manual_seed(0)
        net = getattr(torchvision.models, name)().eval()
        torch.save(net.state_dict(), folder / f"{name}.pth")
        out[name] = net, folder / f"{name}.pth"
    yield out
    shutil.rmtree(folder)  # 0.6 GB


@pytest.mark.parametrize("name", list(FIRST_CONV))
def test_torchvision_file_gives_torchvision_outputs_in_rgb_and_gray(tv, name):
    """The RGB net loads the file; the gray net takes the RGB net's weights (one 0.5 GB VGG file read, not two)."""
    ref, path = tv[name]
    x = torch.rand(2, 3, 40, 40)
    gray = x[:, :1]
    rgb_net = create_model(name, in_chans=3, num_classes=1000, pretrained=str(path)).eval()
    assert rgb_net.load_report.loaded == rgb_net.load_report.total and not rgb_net.load_report.skipped
    gray_net = create_model(name, in_chans=1, num_classes=1000).eval()
    report = load_weights(gray_net, rgb_net.state_dict(), str(path))
    assert report.adapted == [f"{FIRST_CONV[name]} adapted from 3 to 1 input channels"]
    with torch.no_grad():
        torch.testing.assert_close(rgb_net(x), ref(x))
        torch.testing.assert_close(gray_net(gray), ref(gray.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_head_of_another_size_is_reinitialised_and_reported(tv):
    ref, path = tv["resnet18"]
    torch.manual_seed(5)
    net = create_model("resnet18", in_chans=3, num_classes=7, pretrained=str(path)).eval()
    report = net.load_report
    assert report.loaded == report.total - 2 and list(report.skipped) == ["head"]
    assert "head.weight is 7x512, 1000x512 in the source" in report.skipped["head"]
    torch.manual_seed(5)
    fresh = create_model("resnet18", in_chans=3, num_classes=7)
    torch.testing.assert_close(net.head.weight, fresh.head.weight)  # the builder's initialisation, kept
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        features = nn.Sequential(*list(ref.children())[:-1])(x).flatten(1)  # torchvision without its fc
        torch.testing.assert_close(net.forward_features(x), features)
    assert "re-initialised" in report.summary() and report.as_dict()["skipped"] == report.skipped


def test_small_stem_is_skipped_and_the_stages_load(tv):
    net = create_model("resnet18", in_chans=1, num_classes=7, stem="small", pretrained=str(tv["resnet18"][1]))
    assert set(net.load_report.skipped) == {"stem", "head"}
    assert "stem.0.weight is 64x1x3x3, 64x3x7x7 in the source" in net.load_report.skipped["stem"]
    torch.testing.assert_close(net.stages[3][1].conv2.weight, tv["resnet18"][0].layer4[1].conv2.weight)


def test_safetensors_file_without_bn_counters_loads_like_the_pth(tv, tmp_path):
    """Also as torchvision's older ImageNet files are: no num_batches_tracked (PyTorch < 0.4.1)."""
    from safetensors.torch import save_file

    ref, path = tv["resnet18"]
    old_style = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(old_style, tmp_path / "r18.safetensors")
    a = create_model("resnet18", num_classes=1000, pretrained=str(tmp_path / "r18.safetensors"))
    b = create_model("resnet18", num_classes=1000, pretrained=str(path)).state_dict()
    assert a.load_report.loaded == a.load_report.total == len(old_style)
    assert all(torch.equal(v, b[k]) for k, v in a.state_dict().items() if not k.endswith("num_batches_tracked"))


def test_file_of_another_family_fails_in_one_line_naming_keys(tv):
    with pytest.raises(FerlabError) as err:  # a narrow VGG-11: the file is read, nothing of it fits
        create_model("vgg11_bn", in_chans=3, num_classes=7, hidden=[8], pool_size=1, pretrained=str(tv["resnet18"][1]))
    message = str(err.value)
    assert "\n" not in message and "resnet18.pth does not fit VGG" in message
    assert "stages.0.convs.0.weight (64x3x3x3) not in the source" in message and "more)" in message
    assert "source tensor conv1.weight (64x3x7x7) has no place here" in message and message.endswith("ResNet layout)")


@pytest.mark.parametrize("value, match", [("missing.pth", "no such file"), ("weights.npz", "expected imagenet"),
                                          ("list.pt", "is not a state dict"), (True, "expected null, imagenet")])
def test_bad_pretrained_values_are_one_line(tmp_path, value, match):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    value = str(tmp_path / value) if isinstance(value, str) else value
    with pytest.raises(FerlabError, match=match):
        create_model("resnet18", in_chans=1, num_classes=7, width=8, pretrained=value)


def test_imagenet_for_a_network_torchvision_lacks_is_one_line():
    with pytest.raises(FerlabError, match="torchvision has no ImageNet weights for CliqueNet"):
        create_model("cliquenet", in_chans=1, num_classes=8, pretrained="imagenet")


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache and no way out: downloads go to a closed local port."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen re-reads the proxies
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_imagenet_offline_with_an_empty_cache_names_the_file_and_folder(offline):
    with pytest.raises(FerlabError) as err:
        create_model("resnet18", in_chans=1, num_classes=7, pretrained="imagenet")
    message = str(err.value)
    assert "\n" not in message and f"resnet18-f37072fd.pth is not in {offline}/" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_imagenet_loads_from_the_hub_cache_offline(offline, tv):
    offline.mkdir(parents=True)
    shutil.copy(tv["resnet18"][1], offline / "resnet18-f37072fd.pth")  # what the offline message asks for
    net = create_model("resnet18", in_chans=3, num_classes=1000, pretrained="imagenet")
    assert net.load_report.source == "imagenet (ResNet18_Weights.IMAGENET1K_V1)"
    torch.testing.assert_close(net.stem[0].weight, tv["resnet18"][0].conv1.weight)


@pytest.mark.parametrize("in_chans", [1, 2, 4, 7])
def test_first_conv_adaptation_is_timms_rule(in_chans):
    timm = pytest.importorskip("timm")
    weight = torch.randn(8, 3, 3, 3)
    torch.testing.assert_close(adapt_input_conv(weight, in_chans), timm.models.adapt_input_conv(in_chans, weight))


def test_gray_to_rgb_keeps_the_output_on_gray_copied_to_three_channels():
    torch.manual_seed(0)
    gray_net = create_model("resnet18", in_chans=1, num_classes=7, width=8).eval()
    rgb_net = create_model("resnet18", in_chans=3, num_classes=7, width=8).eval()
    report = load_weights(rgb_net, gray_net.state_dict(), "gray run")
    assert report.adapted == ["stem.0.weight adapted from 1 to 3 input channels"]
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(rgb_net(x.expand(-1, 3, -1, -1)), gray_net(x))
