"""`ferlab export`: ONNX and TorchScript with a dynamic batch, parity with PyTorch, and predict on the exports."""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ferlab.checkpoints.restore import Restored, restore
from ferlab.errors import FerlabError
from ferlab.infer.backends import load_model
from ferlab.infer.export import export
from ferlab.tasks.export import run_export
from ferlab.tasks.predict import run_predict
from tests.conftest import compose_cfg, run_cli
from tests.test_predict import astronaut


@pytest.fixture(scope="module")
def ckpt(ckpt, tmp_path_factory) -> Path:
    src = ckpt  # the session's checkpoint (conftest)
    own = tmp_path_factory.mktemp("export") / "best.ckpt"  # exports land beside it: keep other modules' copy clean
    own.write_bytes(src.read_bytes())
    return own


def cfg(tmp: Path, name: str, *overrides: str):
    return compose_cfg(tmp / uuid.uuid4().hex[:8], list(overrides), config_name=name)


def test_onnx_export_has_dynamic_batch_metadata_and_parity(ckpt, tmp_path, capsys):
    result = run_export(cfg(tmp_path, "export", f"ckpt_path={ckpt}", "format=onnx"))
    path = Path(result["path"])
    assert path == ckpt.with_name("best.onnx") and result["max_abs_diff"] <= 1e-4
    assert "parity: max |logit difference| vs PyTorch" in capsys.readouterr().out
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = json.loads({p.key: p.value for p in model.metadata_props}["ferlab"])
    r = restore(ckpt)
    assert meta["class_names"] == r.class_names and meta["image_size"] == 48 and meta["mean"] == r.mean
    loaded = load_model(None, "onnx", str(path))  # runs without the checkpoint
    x = torch.randn(5, 1, 48, 48)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.run(x.numpy()), r.net(x).numpy(), atol=1e-4)


def test_torchscript_export_and_existing_file_kept(ckpt, tmp_path):
    out = tmp_path / "model.pt"
    result = run_export(cfg(tmp_path, "export", f"ckpt_path={ckpt}", "format=torchscript", f"out_path={out}"))
    assert result["max_abs_diff"] <= 1e-4 and set(result["diffs"]) == {1, 4}
    with warnings.catch_warnings():  # torch.jit.load's deprecation note
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(out))
    r = restore(ckpt)
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), r.net(x))
    before = out.read_bytes()
    with pytest.raises(FerlabError, match="model.pt exists; pass overwrite=true"):
        run_export(cfg(tmp_path, "export", f"ckpt_path={ckpt}", "format=torchscript", f"out_path={out}"))
    assert out.read_bytes() == before


def test_predict_on_exports_matches_pytorch(ckpt, tmp_path):
    import cv2

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), astronaut())
    run_export(cfg(tmp_path, "export", f"ckpt_path={ckpt}", "format=onnx", "overwrite=true"))
    run_export(cfg(tmp_path, "export", f"ckpt_path={ckpt}", "format=torchscript", "overwrite=true"))
    probs = {}
    for backend in ("torch", "onnx", "torchscript"):
        result = run_predict(cfg(tmp_path, "predict", f"ckpt_path={ckpt}", f"input={photo}", f"backend={backend}",
                                 "progress=false", "annotate=false"))
        doc = json.loads(Path(result["files"][1]).read_text())
        assert doc["model"]["backend"] == backend
        probs[backend] = np.array(list(doc["predictions"][0]["faces"][0]["probs"].values()))
    np.testing.assert_allclose(probs["onnx"], probs["torch"], atol=1e-5)
    np.testing.assert_allclose(probs["torchscript"], probs["torch"], atol=1e-5)


def test_onnx_backend_without_an_export_says_how_to_make_one(ckpt, tmp_path):
    lonely = tmp_path / "lonely.ckpt"
    lonely.write_bytes(ckpt.read_bytes())
    r = run_cli("predict", f"ckpt_path={lonely}", f"input={tmp_path}", "backend=onnx", cwd=tmp_path)
    err = r.stderr.strip()
    assert r.returncode == 1 and err.count("\n") == 0, err[-2000:]
    assert f"onnx model not found: {tmp_path / 'lonely.onnx'}; run `ferlab export" in err


class BranchOnInput(nn.Module):
    """Its output depends on a Python `if` on the data: tracing keeps one branch, so exports must disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(1, 2, 3)).unsqueeze(1).repeat(1, 7)
        return pooled if bool(x.sum() > 0) else -pooled


def restored_from(net: nn.Module, model_cfg: dict | None = None) -> Restored:
    return Restored(net.eval(), {"model": model_cfg or {}}, [f"c{i}" for i in range(7)], 1, 48, [0.5], [0.25],
                    Path("x.ckpt"))


def test_an_export_that_disagrees_is_refused_and_not_written(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "branchy.torchscript.pt"
    with pytest.raises(FerlabError, match=r"torchscript export differs from PyTorch by .* not written"):
        export(restored_from(BranchOnInput()), "torchscript", out, batches=(1, 2, 3, 4, 5, 6))
    assert not out.exists() and not list(tmp_path.iterdir())


# The families beyond the ResNet of the checkpoint tests, narrowed where the defaults are large.
ZOO = {
    "deep_emotion": [],  # spatial transformer: affine_grid + grid_sample need opset 20
    "cliquenet": ["model.channels=8", "model.stem_channels=16", "model.layers=3"],
    "vgg_fer": ["model.channels=[8,8,16,16,16]", "model.hidden=[16,16]"],
    "ir50": ["model.num_stages=2"],  # the first two of IR-50's four stages (1.2 M parameters)
    "mobilefacenet": [],
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_families_export_to_onnx_with_parity(name, tmp_path):
    train_cfg = compose_cfg(tmp_path, [f"model={name}", *ZOO[name]])
    GlobalHydra.instance().clear()
    model_cfg = OmegaConf.to_container(train_cfg.model, resolve=True)
    torch.manual_seed(0)
    result = export(restored_from(instantiate(model_cfg), model_cfg), "onnx", tmp_path / f"{name}.onnx")
    assert result.max_abs_diff <= 1e-4 and (tmp_path / f"{name}.onnx").is_file()


class PoolTo7(nn.Module):
    """torchvision VGG's head on a 48 px input: a 1x1 map adaptively pooled to 7x7, then flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool, self.head = nn.Conv2d(1, 4, 3, stride=48), nn.AdaptiveAvgPool2d(7), nn.Linear(4 * 49, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv(x)).flatten(1))  # (B, 4, 1, 1) -> (B, 4, 7, 7) -> (B, 7)


def test_what_the_legacy_onnx_exporter_refuses_goes_through_dynamo(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(FerlabError, match="ONNX export failed at opset 20: Unsupported: ONNX export of operator adaptive_avg_pool2d"):
        export(restored_from(PoolTo7()), "onnx", tmp_path / "legacy.onnx", exporter="legacy")
    result = export(restored_from(PoolTo7()), "onnx", tmp_path / "auto.onnx")  # auto: legacy, then dynamo
    assert result.max_abs_diff <= 1e-4 and set(result.diffs) == {1, 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.onnx"]
