"""Every option of every config group composes and instantiates into the object its group promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ferlab.config.runner import CONF_DIR

SKIP_GROUPS = {"hydra", "local", "experiment", "hparams_search", "debug"}  # covered by their own tests


# Groups that belong to another task's root config (conf/<root>.yaml); the rest compose under train.yaml.
ROOTS = {"tta": "eval", "detector": "predict"}


TRACKERS = {"many", "mlflow", "wandb"}  # logger options importing MLflow or W&B: seconds, not in `make test-fast`


def _options() -> list:
    conf = Path(CONF_DIR)
    groups = sorted(d.name for d in conf.iterdir() if d.is_dir() and d.name not in SKIP_GROUPS)
    return [pytest.param(g, f.stem, marks=pytest.mark.slow) if g == "logger" and f.stem in TRACKERS else (g, f.stem)
            for g in groups for f in sorted((conf / g).glob("*.yaml"))]


def _check_data(cfg):
    from ferlab.data.datamodule import FERDataModule

    dm = instantiate(cfg.data)
    assert isinstance(dm, FERDataModule) and dm.num_classes == len(dm.class_names)


def _check_model(cfg):
    # on the meta device: the whole module tree is built and its output shape inferred, with no weights to fill
    # (the VGGs' 140M would cost seconds each); tests/test_models.py runs every model on real tensors
    with torch.device("meta"):
        net = instantiate(cfg.model).eval()
        x = torch.randn(2, cfg.data.in_chans, cfg.data.image_size, cfg.data.image_size)
        assert net(x).shape == (2, cfg.data.num_classes)


def _check_optim(cfg):
    from ferlab.lit.finetune import optimizer_factory

    factory, backbone_lr_mult = optimizer_factory(cfg.optim)  # backbone_lr_mult: ferlab's, not the optimizer's
    opt = factory(params=torch.nn.Linear(2, 2).parameters())
    assert isinstance(opt, torch.optim.Optimizer) and backbone_lr_mult > 0


def _check_sched(cfg):
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    out = instantiate(cfg.sched)(opt)
    assert out is None or out["interval"] in ("epoch", "step")


def _check_loss(cfg):
    loss = instantiate(cfg.loss)
    assert torch.isfinite(loss(torch.randn(4, 7), torch.tensor([0, 1, 2, 3])))


def _check_trainer(cfg):
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        from hydra.errors import InstantiationException

        with pytest.raises(InstantiationException, match="No supported gpu backend"):  # asks for a GPU, says so
            instantiate(cfg.trainer)
        return
    import pytorch_lightning as pl

    assert isinstance(instantiate(cfg.trainer), pl.Trainer)


def _check_each(group):
    def check(cfg):
        for name, node in (cfg[group] or {}).items():
            if node is not None:
                assert instantiate(node) is not None, name

    return check


def _check_augment(cfg):
    aug = instantiate(cfg.augment)
    x = torch.rand(4, 1, 48, 48)
    out = aug(x)
    assert out.shape == x.shape and out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def _check_tta(cfg):
    tta = instantiate(cfg.tta)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(7))
    probs = tta(net, torch.rand(3, 1, 48, 48))
    assert probs.shape == (3, 7) and torch.allclose(probs.sum(1), torch.ones(3))


def _check_detector(cfg):
    import numpy as np

    boxes = instantiate(cfg.detector)(np.zeros((120, 160, 3), np.uint8))  # a blank frame: no face, or the whole frame
    assert boxes.dtype == np.int64 and boxes.shape[1:] == (4,) and len(boxes) <= 1


def _check_train_method(cfg):
    from ferlab.methods import Method

    method = instantiate(cfg.train_method)
    net = method.wrap(instantiate(cfg.model)).eval()  # the network the method evaluates
    x = torch.randn(2, cfg.data.in_chans, cfg.data.image_size, cfg.data.image_size)
    assert isinstance(method, Method) and net(x).shape == (2, cfg.data.num_classes)


def _check_head(cfg):
    head = instantiate(cfg.head)
    net = instantiate(cfg.model).eval()
    x = torch.randn(2, cfg.data.in_chans, cfg.data.image_size, cfg.data.image_size)
    assert net(x).shape == (2, head.outputs) and bool(cfg.data.get("va_targets")) == head.has_va


def _check_paths(cfg):
    assert OmegaConf.to_container(cfg.paths, resolve=True)["data_dir"].endswith("data")


CHECKS = {
    "data": _check_data, "model": _check_model, "optim": _check_optim, "sched": _check_sched,
    "loss": _check_loss, "trainer": _check_trainer, "callbacks": _check_each("callbacks"),
    "logger": _check_each("logger"), "augment": _check_augment, "paths": _check_paths,
    "tta": _check_tta, "detector": _check_detector, "head": _check_head, "train_method": _check_train_method,
}


@pytest.mark.parametrize("group, option", _options(), ids=lambda v: str(v))
def test_option_composes_and_instantiates(make_cfg, group, option):
    cfg = make_cfg(f"{group}={option}", fast=False, config_name=ROOTS.get(group, "train"))
    assert group in CHECKS, f"no instantiation check for config group {group!r}"
    CHECKS[group](cfg)


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF_DIR) / "debug").glob("*.yaml")))
def test_debug_presets_compose(make_cfg, option):
    cfg = make_cfg(f"debug={option}", fast=False)
    assert cfg.task_name != "train"


def test_class_count_and_channels_flow_from_data_into_model(make_cfg):
    cfg = make_cfg("data.in_chans=3", fast=False)
    assert cfg.model.num_classes == 7 and cfg.model.in_chans == 3
    assert list(cfg.data.class_names) == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
