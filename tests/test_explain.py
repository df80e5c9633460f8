"""`ferlab explain`: every method's files from a trained checkpoint, and each method on a case whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ferlab.analysis.attribution import grad_cam, saliency
from ferlab.analysis.filters import find_layer, maximize_filters
from ferlab.analysis.prototypes import class_prototypes, prototype_probs
from ferlab.config.runner import CONF_DIR
from ferlab.errors import FerlabError
from ferlab.models import list_models
from ferlab.models.base import FERNet
from ferlab.tasks.explain import run_explain
from tests.conftest import compose_cfg, run_cli
from tests.test_eval import tb_image_tags

SMALL = ["per_class=2", "filters.num_filters=4", "filters.steps=3", "misclassified.count=6"]


def explain_cfg(tmp_path: Path, *overrides: str):
    return compose_cfg(tmp_path, list(overrides), config_name="explain")


def test_every_method_writes_its_files(trained, tmp_path):
    out = tmp_path / "explain"
    result = run_explain(explain_cfg(tmp_path, f"ckpt_path={trained['checkpoints']['best']}", f"out_dir={out}", *SMALL))
    assert result["split"] == "test_public" and set(result["files"]) == {
        "saliency", "gradcam", "filters", "misclassified", "prototypes"}
    for name in ("saliency", "gradcam", "filters", "misclassified"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    assert set(tb_image_tags(out / "tensorboard")) == {f"explain/{n}" for n in ("saliency", "gradcam", "filters",
                                                                                   "misclassified")}
    filters = json.loads((out / "filters.json").read_text())
    assert filters["layer"] == "stages.3" and len(filters["filters"]) == 4
    wrong = json.loads((out / "misclassified.json").read_text())
    confidences = [r["confidence"] for r in wrong["shown"]]
    assert wrong["errors"] > 0 and confidences == sorted(confidences, reverse=True)
    assert all(r["true"] != r["pred"] for r in wrong["shown"])
    # the linear head scores here exactly what the training-time report scored on the same split
    protos = json.loads((out / "prototypes.json").read_text())
    report = json.loads((Path(trained["checkpoints"]["best"]).parents[1] / "eval" / "report.json").read_text())
    assert protos["classifiers"]["linear head"]["accuracy"] == pytest.approx(report["metrics"]["test_public/acc"])
    assert 0 <= protos["classifiers"]["prototypes"]["accuracy"] <= 1 and protos["train_images"] > 0
    assert "| accuracy |" in (out / "prototypes.md").read_text()
    import numpy as np

    saved = np.load(out / "prototypes.npz")
    assert saved["prototypes"].shape == (7, protos["num_features"]) and list(saved["class_names"])[1] == "disgust"


def test_explain_cli_and_the_run_dir(trained, tmp_path):
    r = run_cli("explain", "ckpt_path=missing.ckpt", "method=gradcam", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == "ferlab: error: checkpoint not found: missing.ckpt"
    ckpt = trained["checkpoints"]["best"]
    result = run_explain(explain_cfg(tmp_path, f"ckpt_path={ckpt}", "method=[misclassified]", "split=val",
                                     "tensorboard=false"))
    out = Path(ckpt).parents[1] / "explain" / "val"
    assert result["output_dir"] == str(out) and result["split"] == "val"
    assert json.loads((out / "misclassified.json").read_text())["split"] == "val"


def test_option_errors_are_clear(trained, tmp_path):
    ckpt = f"ckpt_path={trained['checkpoints']['best']}"
    for overrides, message in ((["method=heatmap"], "method: expected"), (["target=true"], "target: expected"),
                               (["split=holdout"], "split: expected test, val, train or one of test_public"),
                               (["method=filters", "filters.layer=nope"], "no layer 'nope'.*stem")):
        with pytest.raises(FerlabError, match=message):
            run_explain(explain_cfg(tmp_path, ckpt, f"out_dir={tmp_path}", *overrides))


def test_saliency_of_a_linear_model_is_its_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    pixels, target = torch.rand(2, 2, 4, 4), torch.tensor([2, 0])
    maps = saliency(net, pixels, target, normalize=lambda x: (x - 0.5) / 0.25)
    weights = net[1].weight.detach().view(3, 2, 4, 4) / 0.25  # d score / d pixel through the normalization
    torch.testing.assert_close(maps, weights[target].abs().amax(1))


class HalfNet(FERNet):
    """Only the left half of the image decides: its cam layer outputs [left half, right half] as two channels."""

    def __init__(self) -> None:
        super().__init__()
        self.split = nn.Identity()
        self.init_head(2, 2, 0.0)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
            self.head.bias.zero_()
        self.set_cam_layer(self.split)

    def forward_features(self, x):  # (B, 1, H, W) -> (B, 2)
        left = torch.zeros_like(x)
        left[..., : x.shape[-1] // 2] = 1
        halves = self.split(torch.cat([x * left, x * (1 - left)], 1))  # (B, 2, H, W)
        return halves.mean((2, 3))


def test_gradcam_finds_the_half_that_decides():
    x = torch.rand(3, 1, 8, 8) + 0.1
    cam = grad_cam(HalfNet().eval(), x, torch.zeros(3, dtype=torch.long))
    assert cam.shape == (3, 8, 8) and cam[..., 4:].abs().max() < 1e-6 and cam[..., :3].min() > 0
    torch.testing.assert_close(cam.flatten(1).amax(1), torch.ones(3))
    # the other class's score falls as the left half brightens: nothing supports it
    assert grad_cam(HalfNet().eval(), x, torch.ones(3, dtype=torch.long)).abs().max() < 1e-6


def build_small(name: str) -> FERNet:
    """A zoo model from its YAML at gray 48x48, 7 classes; a classifier MLP (`hidden`) shrunk, as Grad-CAM hooks before it."""
    node = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    if OmegaConf.is_list(node.get("hidden")):  # VGG / AlexNet-style MLPs: 4096-wide layers take seconds to build
        node.hidden = [32] * len(node.hidden)
    cfg = OmegaConf.create({"data": {"in_chans": 1, "num_classes": 7, "image_size": 48}, "model": node})
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


@pytest.mark.parametrize("name", list_models())
def test_gradcam_on_every_zoo_model(name):
    net = build_small(name)
    cam = grad_cam(net, torch.rand(2, 1, 48, 48), torch.tensor([0, 3]))
    assert cam.shape == (2, 48, 48) and torch.isfinite(cam).all()
    assert cam.min() >= 0 and cam.max() <= 1 and net.cam_layer_name


def test_filter_images_raise_their_filters_and_stay_valid():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3)).eval()
    name, layer = find_layer(net, "2")
    images, start, end = maximize_filters(net, layer, (1, 12, 12), [0, 3, 5], steps=25, lr=0.05)
    assert images.shape == (3, 1, 12, 12) and images.min() >= 0 and images.max() <= 1
    assert (end > start + 0.05).all()
    assert all(p.requires_grad for p in net.parameters())  # the net is left as it was
    with pytest.raises(FerlabError, match="no layer 'conv9'.*include 0, 1, 2"):
        find_layer(net, "conv9")


def test_prototype_classifier_on_known_features():
    centers = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([0, 1, 2] * 20)  # class 3 has no training images
    features = centers[targets] + 0.3 * torch.randn(60, 3, generator=g)
    protos = class_prototypes(features, targets, 4)
    for c in range(3):
        torch.testing.assert_close(protos[c], features[targets == c].mean(0))
    assert protos[3].isnan().all()
    queries = centers[:3] + 0.5
    probs = prototype_probs(queries, protos)
    expected = torch.softmax(-torch.cdist(queries.double(), protos[:3].double()), 1).float()
    torch.testing.assert_close(probs[:, :3], expected)
    assert (probs[:, 3] == 0).all() and probs.argmax(1).tolist() == [0, 1, 2]
