"""model=timm: a timm weight file loads through timm's pretrained path (same outputs; gray and class-count adaptation
timm's), bad names, files and offline downloads are one line, and a tiny timm net trains, evaluates, exports with
parity and explains with Grad-CAM like every zoo model. Weight files are made here; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ferlab.errors import FerlabError
from ferlab.models import create_model
from tests.conftest import compose_cfg

timm = pytest.importorskip("timm")  # the `timm` extra; `make install` has it

NAME = "test_efficientnet"  # timm's own 0.1 M-parameter test network


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A timm network (seeded) and its state dict, saved as timm's hub files are (.safetensors)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    body = timm.create_model(NAME).eval()
    path = tmp_path_factory.mktemp("timm") / f"{NAME}.safetensors"
    save_file(body.state_dict(), path)
    return body, path


def test_timm_file_gives_timms_outputs(timm_file):
    body, path = timm_file
    net = create_model("timm", name=NAME, in_chans=3, num_classes=1000, pretrained=str(path)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), body(x))
    assert net.load_report.loaded == net.load_report.total and not net.load_report.skipped


def test_timm_file_into_gray_and_seven_classes_is_adapted_by_timm(timm_file):
    body, path = timm_file
    net = create_model("timm", name=NAME, in_chans=1, num_classes=7, pretrained=str(path)).eval()
    gray = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = body.forward_head(body.forward_features(gray.expand(-1, 3, -1, -1)), pre_logits=True)
        torch.testing.assert_close(net.forward_features(gray), expected, rtol=1e-4, atol=1e-5)
    report = net.load_report
    assert report.adapted == ["conv_stem adapted from 3 to 1 input channels"]
    assert report.skipped == {"head": "7 classes here, 1000 in the source"} and report.loaded == report.total - 2


def test_unknown_name_wrong_file_and_offline_download_are_one_line(timm_file, tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(FerlabError, match=r"'efficientnet_b00' is not a timm architecture; closest: efficientnet_b0"):
        create_model("timm", name="efficientnet_b00")
    with pytest.raises(FerlabError) as err:  # test_efficientnet's weights into another architecture
        create_model("timm", name="test_convnext", pretrained=str(timm_file[1]))
    message = str(err.value)
    assert "\n" not in message and "test_efficientnet.safetensors does not fit timm test_convnext" in message
    assert "stem.0.weight (24x3x4x4) not in the file" in message
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FerlabError) as err:
        create_model("timm", name=NAME, pretrained=True)
    message = str(err.value)
    assert "\n" not in message and "https://huggingface.co/timm/test_efficientnet.r160_in1k" in message
    assert str(tmp_path / "hf") in message and "model.pretrained=/path/to/model.safetensors" in message


def test_vit_grad_cam_layer_is_the_patch_grid_entering_the_last_block():
    from ferlab.analysis.attribution import grad_cam

    torch.manual_seed(0)
    net = create_model("timm", name="test_vit", in_chans=1, num_classes=7, img_size=48).eval()
    assert net.cam_layer_name == "patch_grid.grid"
    cam = grad_cam(net, torch.rand(2, 1, 48, 48), torch.tensor([0, 3]))
    assert cam.shape == (2, 48, 48) and cam.amax((1, 2)).gt(0).all()  # cls pooling still sees the patches


RUN = ["model=timm", f"model.name={NAME}", "data.source.num_images=200", "data.batch_size=32", "trainer.max_epochs=1",
       "trainer.num_sanity_val_steps=0", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
       "logger=none"]


def test_timm_net_trains_evaluates_exports_and_explains(tmp_path):
    from ferlab.tasks.evaluate import run_eval
    from ferlab.tasks.explain import run_explain
    from ferlab.tasks.export import run_export
    from ferlab.tasks.train import run_train

    run_train(compose_cfg(tmp_path / "fdr", [*RUN, "debug=fdr"]))
    metrics = run_train(compose_cfg(tmp_path, [*RUN, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                                               "trainer.limit_test_batches=1"]))
    ckpt = metrics["checkpoints"]["last"]
    report = run_eval(compose_cfg(tmp_path / "eval", [f"ckpt_path={ckpt}"], config_name="eval"))
    assert 0 <= report["metrics"]["test/acc"] <= 1
    exported = run_export(compose_cfg(tmp_path / "export", [f"ckpt_path={ckpt}", "format=onnx"], config_name="export"))
    assert exported["max_abs_diff"] <= 1e-4
    explained = run_explain(compose_cfg(tmp_path / "explain", [f"ckpt_path={ckpt}", "method=[gradcam]", "per_class=1",
                                                               "tensorboard=false"], config_name="explain"))
    assert [Path(p).suffix for p in explained["files"]["gradcam"]] and all(
        Path(p).is_file() for p in explained["files"]["gradcam"])
    assert json.loads((Path(ckpt).parents[1] / "metrics.json").read_text())["weights"] == {}
