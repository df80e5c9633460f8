"""Shared model options (norm, act, drop_rate), ResNet multi-scale fusion, clear errors for bad arguments."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from ferlab.config.runner import guarded
from ferlab.errors import FerlabError
from ferlab.models import create_model, list_models
from ferlab.models.registry import get_builder


def accepts(name: str, arg: str) -> bool:
    return arg in inspect.signature(get_builder(name)).parameters


def on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):  # structure only: no weights are allocated
        return create_model(name, in_chans=1, num_classes=7, **kwargs)


@pytest.mark.parametrize("name", [n for n in list_models() if accepts(n, "norm")])
def test_norm_none_removes_every_normalization_layer(name: str):
    assert any(isinstance(m, nn.BatchNorm2d) for m in on_meta(name, norm="batch").modules())
    net = on_meta(name, norm="none")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@pytest.mark.parametrize("name", [n for n in list_models() if accepts(n, "act")])
def test_act_replaces_every_activation(name: str):
    net = on_meta(name, act="silu")
    assert any(isinstance(m, nn.SiLU) for m in net.modules())
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())


@pytest.mark.parametrize("name", list_models())
def test_drop_rate_is_dropout_before_the_head(name: str):
    assert accepts(name, "drop_rate")
    net = on_meta(name, drop_rate=0.3)
    assert net.drop_rate == 0.3 and isinstance(net.head_drop, nn.Dropout)


def test_norm_none_gives_resnet_convs_their_own_bias():
    net = on_meta("resnet18", norm="none")
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))


VARIANTS = [
    ("resnet18", dict(width=8, norm="none", act="gelu", fusion="concat", fusion_stages=4), 48),
    ("resnext18_fer", dict(arch=[[1, 32], [2, 64], [3, 64], [2, 128], [1, 128]], drop_rates=[0.0, 0.1],
                           stem="small", act="leaky_relu"), 48),
    ("cliquenet", dict(stem="cifar", blocks=2, layers=3, channels=8, loops=2, attention=False,
                       bottleneck=True, compression=True), 32),
    ("cliquenet", dict(layers=3, channels=8, loops=0, norm="none", act="elu"), 48),
    ("deep_emotion", dict(input_size=64, norm="none", act="silu", drop_rate=0.2), 64),
    ("vgg_fer", dict(channels=[8, 16, 16, 32, 32], convs_per_stage=2, hidden=[], norm="none"), 48),
    ("lenet7", dict(norm="batch", act="tanh", hidden=[64]), 40),
]


@pytest.mark.parametrize("name, kwargs, side", VARIANTS, ids=[f"{v[0]}{i}" for i, v in enumerate(VARIANTS)])
def test_non_default_variants_train(name: str, kwargs: dict, side: int):
    torch.manual_seed(0)
    net = create_model(name, in_chans=1, num_classes=7, **kwargs).train()
    out = net(torch.randn(2, 1, side, side))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("fusion, stages, width", [("concat", 2, 64 + 128), ("concat", 4, 16 + 32 + 64 + 128),
                                                   ("weighted", 3, 128)])
def test_fusion_embedding_width(fusion: str, stages: int, width: int):
    net = create_model("resnet18", in_chans=1, num_classes=7, width=16, fusion=fusion, fusion_stages=stages)
    assert net.num_features == width == net.head.in_features
    assert net.forward_features(torch.randn(2, 1, 48, 48)).shape == (2, width)


def _plain_and_fused(fusion: str) -> tuple[nn.Module, nn.Module]:
    """A plain resnet18 and a fused one sharing every backbone weight."""
    torch.manual_seed(0)
    fused = create_model("resnet18", in_chans=1, num_classes=7, width=8, fusion=fusion, fusion_stages=3)
    fused.eval()
    plain = create_model("resnet18", in_chans=1, num_classes=7, width=8).eval()
    own = fused.state_dict()
    plain.load_state_dict({k: own[k] for k in plain.state_dict() if not k.startswith("head.")}, strict=False)
    return plain, fused


def test_concat_fusion_ends_with_the_last_stage_features():
    plain, fused = _plain_and_fused("concat")
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        last = plain.forward_features(x)
        torch.testing.assert_close(fused.forward_features(x)[:, -last.shape[1]:], last)


def test_weighted_fusion_averages_stages_with_learned_weights():
    x = torch.randn(2, 1, 48, 48)
    trained = _plain_and_fused("weighted")[1].train()
    trained(x).sum().backward()
    assert trained.fusion.logits.grad.abs().sum() > 0 and trained.fusion.proj[0].weight.grad.abs().sum() > 0
    plain, fused = _plain_and_fused("weighted")
    with torch.no_grad():
        mixed = fused.forward_features(x)
        assert not torch.allclose(mixed, plain.forward_features(x))
        fused.fusion.logits.copy_(torch.tensor([-1e4, -1e4, 0.0]))  # all weight on the last stage
        torch.testing.assert_close(fused.forward_features(x), plain.forward_features(x))


@pytest.mark.parametrize("name, kwargs, words", [
    ("resnet18", {"norm": "bn"}, "norm='bn'"),
    ("vgg_fer", {"act": "relu6"}, "act='relu6'"),
    ("resnet18", {"stem": "tiny"}, "stem='tiny'"),
    ("resnet34", {"fusion": "sum"}, "fusion='sum'"),
    ("resnet18", {"fusion": "concat", "fusion_stages": 5}, "fusion_stages=5"),
    ("resnext18_fer", {"group_width": 48}, "group_width=48"),
    ("resnext18_fer", {"arch": [[2, 64], [2]]}, "arch="),
    ("resnext18_fer", {"drop_rates": [0.5]}, "drop_rates="),
    ("lenet7", {"drop_rate": 1.5}, "drop_rate=1.5"),
    ("deep_emotion", {"input_size": 12}, "input_size=12"),
    ("cliquenet", {"layers": 1}, "layers=1"),
    ("cliquenet", {"stem": "big"}, "stem='big'"),
    ("alexnet_fer", {"hidden": [0]}, "hidden[0]=0"),
])
def test_bad_arguments_are_one_clear_error(name: str, kwargs: dict, words: str):
    with pytest.raises(FerlabError) as err:
        on_meta(name, **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(FerlabError, match="unknown model 'resnet19'"):
        create_model("resnet19")


def test_deep_emotion_rejects_images_of_another_size():
    with pytest.raises(FerlabError, match="model.input_size"):
        create_model("deep_emotion", in_chans=1, num_classes=7, input_size=48)(torch.randn(1, 1, 64, 64))


def test_a_bad_model_argument_ends_the_task_with_one_line(make_cfg, capsys):
    """`ferlab train model.norm=bn`: Hydra's instantiate wraps the error, the task wrapper unwraps it."""
    from hydra.utils import instantiate

    cfg = make_cfg("model.norm=bn")
    with pytest.raises(SystemExit) as exited:
        guarded(lambda c: instantiate(c.model), cfg)
    assert exited.value.code == 1
    assert capsys.readouterr().err == "ferlab: error: model argument norm='bn' is not one of: batch, none\n"


def test_cam_layer_is_not_saved_twice():
    net = create_model("resnet18", in_chans=1, num_classes=7, width=8)
    state = net.state_dict()
    assert net.cam_layer is net.stages[-1] and not any(k.startswith("cam_layer.") for k in state)
