"""The feature-map surface the methods read, on every registered model: forward_features(x) equals
pool_features(forward_feature_map(x)) exactly, the map is the Grad-CAM layer's output, and a model without a single
map says so in one line (as a method needing one does, when it is built)."""

from __future__ import annotations

import inspect

import pytest
import torch

from ferlab.errors import FerlabError
from ferlab.methods import list_methods, method_for_target
from ferlab.models import list_models
from ferlab.models.registry import get_builder

NO_FEATURE_MAP = {"cliquenet"}  # its multi-scale embedding pools every block


def small(model: str, **kwargs) -> torch.nn.Module:
    """The registered model at 1x48x48, 3 classes, with narrow hidden layers where it has a list of them (the same
    classes and code paths as the YAML defaults, built in a fraction of the time)."""
    params = inspect.signature(get_builder(model)).parameters
    shrink = {k: v for k, v in {"hidden": (16, 16), "width": 16}.items()
              if k in params and type(params[k].default) is type(v)}
    shrink.update({k: 48 for k in ("img_size", "input_size") if k in params})
    torch.manual_seed(0)
    return get_builder(model)(in_chans=1, num_classes=3, **{**shrink, **kwargs}).eval()


def check_surface(net: torch.nn.Module, x: torch.Tensor) -> None:
    seen = {}
    hook = net.cam_layer.register_forward_hook(lambda m, i, out: seen.setdefault("out", out))
    with torch.no_grad():
        fmap = net.forward_feature_map(x)
        assert fmap.ndim == 4 and fmap.shape[:2] == (len(x), net.feature_map_channels)
        assert torch.equal(net.forward_features(x), net.pool_features(fmap))
    hook.remove()
    assert torch.equal(seen["out"], fmap)  # the map Grad-CAM explains


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_the_feature_map_surface_or_says_why_not(name):
    net, x = small(name), torch.randn(2, 1, 48, 48)
    assert net.has_feature_map == (name not in NO_FEATURE_MAP)
    if net.has_feature_map:
        check_surface(net, x)
    else:
        with pytest.raises(FerlabError, match="has no single feature map"):
            net.forward_feature_map(x)


@pytest.mark.parametrize("name,kwargs", [("resnet18_small", {"fusion": "concat"}),
                                         ("timm", {"name": "vit_tiny_patch16_224"})])
def test_fused_stages_and_token_models_have_no_feature_map(name, kwargs):
    net = small(name, **kwargs)
    assert not net.has_feature_map
    with pytest.raises(FerlabError, match="has no single feature map"):
        net.forward_feature_map(torch.randn(1, 1, 48, 48))


def test_a_method_needing_a_map_refuses_a_model_without_one_in_one_line():
    for method, needs in (("dan", "a feature map"), ("eac", "a feature map")):
        with pytest.raises(FerlabError, match=f"train_method={method} needs {needs}, and CliqueNet has none") as e:
            method_for_target(method)().wrap(small("cliquenet"))
        assert "\n" not in str(e.value)
    with pytest.raises(FerlabError, match="linear head on the pooled feature map.*VGG maps 128 channels to 16"):
        method_for_target("eac")().wrap(small("lenet7"))
    assert list_methods() == ["dan", "eac", "plain", "scn"]


@pytest.mark.parametrize("method", ["scn", "dan"])
def test_a_methods_network_passes_the_surface_through(method):
    net = method_for_target(method)().wrap(small("resnet18_small")).eval()
    check_surface(net, torch.randn(2, 1, 48, 48))
    assert net.cam_layer_name == "body.stages.3" and net.num_classes == 3
