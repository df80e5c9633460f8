"""Every registered model, built from its conf/model YAML, keeps the FERNet contract at FER and ImageNet size.

Registering a builder and adding its YAML is enough for a new model to be covered here.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ferlab.config.runner import CONF_DIR
from ferlab.models import FERNet, list_models
from ferlab.models.registry import get_builder

MODEL_DIR = Path(CONF_DIR) / "model"
# name: (in_chans, side, classes, batch): the data keys a network is built with, and its test batch.
SIZES = {"gray48": (1, 48, 7, 2), "rgb224": (3, 224, 5, 1)}
# The side of rgb224's numerical pass. A network built for 224x224 whose config does not take data.image_size has the
# same modules at any side, and 64x64 costs a VGG 1/12 of a 224x224 forward (~20 GMAC, seconds per pass on a CPU).
NUMERIC_SIDE = 64
STOCHASTIC = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def build(name: str, in_chans: int, side: int, classes: int) -> FERNet:
    """The model exactly as `ferlab train model=<name>` builds it, with the data keys it interpolates."""
    data = {"in_chans": in_chans, "num_classes": classes, "image_size": side}
    cfg = OmegaConf.create({"data": data, "model": OmegaConf.load(MODEL_DIR / f"{name}.yaml")})
    torch.manual_seed(0)
    return instantiate(cfg.model)


def explains_train_eval_gap(net: nn.Module) -> bool:
    """True when the net has batch norm or dropout that actually drops (p > 0)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm)
               or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) for m in net.modules())


def test_registry_and_model_configs_match_one_to_one():
    yamls = sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))
    assert yamls == list_models()
    for name in yamls:
        node = OmegaConf.load(MODEL_DIR / f"{name}.yaml")
        builder = get_builder(name)
        assert node._target_ == f"{builder.__module__}.{name}", name
        params = inspect.signature(builder).parameters
        assert set(node) - {"_target_"} == set(params), f"{name}: YAML keys must be the builder's arguments"
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values()), name
        assert node._get_node("in_chans")._value() == "${data.in_chans}", name
        assert node._get_node("num_classes")._value() == "${data.num_classes}", name


def eval_pass(net: FERNet, x: torch.Tensor, cam: dict) -> torch.Tensor:
    """Eval-mode logits via forward_features + forward_head, checking the embedding and cam_layer shapes."""
    net.eval()
    with torch.no_grad():
        features = net.forward_features(x)
        logits = net.forward_head(features)
    assert features.shape == (x.shape[0], net.num_features)
    assert cam["out"].ndim == 4 and cam["out"].shape[0] == x.shape[0], "cam_layer must output (B, C, h, w)"
    return logits


def freeze_stochastic(net: FERNet) -> FERNet:
    """Train mode, but batch norm and dropout modules as in eval: whatever else differs from eval is a bug."""
    net.train()
    for m in net.modules():
        if isinstance(m, STOCHASTIC):
            m.eval()
    return net


def train_loss(net: FERNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss) with the same dropout masks on every call."""
    torch.manual_seed(3)
    logits = net(x)
    return logits, nn.functional.cross_entropy(logits, y)


def takes_image_size(name: str) -> bool:
    """True when the model's config reads data.image_size (a network built for one input side, e.g. a ViT)."""
    return "${data.image_size}" in OmegaConf.to_yaml(OmegaConf.load(MODEL_DIR / f"{name}.yaml"))


def setup(name: str, size: str, side: int | None = None) -> tuple[FERNet, torch.Tensor, torch.Tensor, dict]:
    """The model built for `size`, a fixed batch (x, y) of `side` (default: the built side), and a dict receiving
    cam_layer's output (gradient retained)."""
    in_chans, built_side, classes, batch = SIZES[size]
    net = build(name, in_chans, built_side, classes)
    assert isinstance(net, FERNet) and isinstance(net.head, nn.Linear)
    assert (net.head.in_features, net.head.out_features) == (net.num_features, classes)
    torch.manual_seed(1)
    side = side or built_side
    x, y = torch.randn(batch, in_chans, side, side), torch.randint(0, classes, (batch,))
    cam: dict = {}

    def keep(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        cam["out"] = out
        if out.requires_grad:
            out.retain_grad()

    net.cam_layer.register_forward_hook(keep)
    return net, x, y, cam


def check_backward(net: FERNet, loss: torch.Tensor, cam: dict) -> None:
    """A finite loss whose backward reaches every parameter with finite values, and cam_layer's output."""
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    # NaN and inf propagate through sums: one pass over the gradients, no (N,) bool tensor per parameter
    assert torch.isfinite(sum(p.grad.sum() for p in net.parameters())), "non-finite gradients"
    cam_grad = cam["out"].grad
    assert cam_grad is not None and cam_grad.abs().sum() > 0, "Grad-CAM needs cam_layer gradients"


# networks of tens of millions of weights: seconds each to build and run, left out of `make test-fast`
HEAVY = {"ir50", "resnext50_32x4d"}


def _by_cost() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n.startswith("vgg") or n in HEAVY else n for n in list_models()]


@pytest.mark.parametrize("name", _by_cost())
def test_model_contract_gray48(name: str):
    """FER2013 shape: output and embedding shapes, eval determinism, train/eval gap exactly when BN or dropout
    is present and from nothing else, finite loss, backward everywhere, one SGD step lowers the loss."""
    net, x, y, cam = setup(name, "gray48")
    logits = eval_pass(net, x, cam)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    with torch.no_grad():
        assert torch.equal(net(x), logits), "eval mode must be deterministic"
        frozen = freeze_stochastic(net)(x)
    torch.testing.assert_close(frozen, logits, msg="train/eval differ beyond BN and dropout")
    train_logits, loss = train_loss(net.train(), x, y)
    check_backward(net, loss, cam)
    gap = not torch.allclose(train_logits.detach(), logits, atol=1e-5, rtol=1e-4)
    assert gap == explains_train_eval_gap(net), "train/eval differ exactly when BN or dropout is present"

    torch.optim.SGD(net.parameters(), lr=0.01).step()
    with torch.no_grad():
        after = train_loss(net, x, y)[1]
    assert after < loss, f"one SGD step on a fixed batch: {loss.item():.4f} -> {after.item():.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_model_contract_rgb224(name: str):
    """ImageNet shape, batch 1. The network as built for 3x224x224 and 5 classes runs a 224x224 image on the meta
    device: output, embedding and cam_layer shapes, inferred without the arithmetic (~20 GMAC for a VGG). Its
    numbers come from the same network with weights on an RGB image of NUMERIC_SIDE (224 when the config takes the
    image size), in two passes: eval, then train mode with BN/dropout frozen and gradients on. Equal logits show
    eval determinism and that nothing but BN/dropout separates train from eval; that the gap exists with them is
    size-independent (gray48)."""
    with torch.device("meta"):
        net, x, y, cam = setup(name, "rgb224")
        assert x.shape == (1, 3, 224, 224)
        assert eval_pass(net, x, cam).shape == (1, 5)
    net, x, y, cam = setup(name, "rgb224", side=None if takes_image_size(name) else NUMERIC_SIDE)
    logits = eval_pass(net, x, cam)
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
    frozen_logits, loss = train_loss(freeze_stochastic(net), x, y)
    torch.testing.assert_close(frozen_logits.detach(), logits,
                               msg="eval not deterministic, or train/eval differ beyond BN and dropout")
    check_backward(net, loss, cam)


@pytest.mark.parametrize("name", list_models())
def test_stored_config_rebuilds_through_the_registry(name: str):
    """What a checkpoint stores (the resolved model config, plain values) rebuilds the same network through the
    registry alone (ferlab.checkpoints.restore): no instantiate on what a file says, every weight fits. Both networks are
    built on the meta device: the check is of modules and shapes, which needs no weight values (filling the VGGs'
    140M took seconds)."""
    from ferlab.checkpoints.restore import model_builder

    data = {"in_chans": 1, "num_classes": 7, "image_size": 48}
    cfg = OmegaConf.create({"data": data, "model": OmegaConf.load(MODEL_DIR / f"{name}.yaml")})
    stored = OmegaConf.to_container(cfg.model, resolve=True)
    target, from_registry = model_builder(stored, f"{name}.ckpt")
    assert target == stored["_target_"]
    with torch.device("meta"):
        rebuilt, built = from_registry(), build(name, 1, 48, 7)
    assert type(rebuilt) is type(built)
    rebuilt.load_state_dict(built.state_dict())  # strict: same modules, same shapes
