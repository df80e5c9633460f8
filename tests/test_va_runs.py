"""Valence/arousal end to end on synthetic AffectNet (2021 layout): training logs the VA metrics (metrics.json,
TensorBoard, `ferlab report`), `ferlab eval` reports them (checked against numpy on the same predictions) with
the 2-D histograms, `ferlab predict` and ONNX export carry the VA outputs; `head=va` alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from ferlab.checkpoints.restore import restore
from ferlab.data.writers_wild import write_affectnet2021
from ferlab.lit.heads import VA_METRIC_NAMES
from ferlab.tasks.evaluate import run_eval
from ferlab.tasks.export import run_export
from ferlab.tasks.predict import run_predict
from ferlab.tasks.train import run_train
from tests.conftest import compose_cfg

RUN = ["data=affectnet", "data.image_size=32", "data.batch_size=16", "model.width=8", "trainer.max_epochs=1",
       "trainer.limit_train_batches=3", "trainer.num_sanity_val_steps=0", "callbacks.rich_progress_bar=null",
       "callbacks.rich_model_summary=null"]


@pytest.fixture(scope="module")
def affectnet(tmp_path_factory) -> Path:
    return write_affectnet2021(tmp_path_factory.mktemp("va") / "affectnet", 140, seed=11, size=32, val_fraction=0.25)


def _train(tmp: Path, root: Path, head: str, *overrides: str) -> dict:
    return run_train(compose_cfg(tmp, [*RUN, f"data.source.root={root}", f"head={head}", *overrides]))


@pytest.fixture(scope="module")
def expr_va(affectnet, tmp_path_factory) -> dict:
    return _train(tmp_path_factory.mktemp("expr_va"), affectnet, "expr_va")


def _cfg(tmp: Path, name: str, *overrides: str):
    return compose_cfg(tmp / name, list(overrides), config_name=name)


def test_training_logs_va_metrics_in_metrics_json_tensorboard_and_report(expr_va):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ferlab.search.report import build_report, find_runs

    run = Path(expr_va["checkpoints"]["best"]).parents[1]
    for split in ("val", "test"):
        found = expr_va["best_epoch_metrics"] if split == "val" else expr_va["test"]
        assert {f"{split}/{m}" for m in VA_METRIC_NAMES} <= set(found) and f"{split}/acc" in found
    assert expr_va["test"]["test/ccc_mean"] == pytest.approx(
        (expr_va["test"]["test/ccc_valence"] + expr_va["test"]["test/ccc_arousal"]) / 2, abs=1e-6)
    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()
    assert {"val/ccc_valence", "val/rmse_arousal", "val/sagr_valence"} <= set(tb.Tags()["scalars"])
    report = build_report(find_runs([run]), [run])
    assert {"val/ccc_mean", "test/rmse_valence"} <= set(report.metrics)
    assert (run / "eval" / "va_histogram.png").is_file()  # the eval report after training has VA too
    assert json.loads((run / "eval" / "report.json").read_text())["splits"]["test"]["va"]["num_annotated"] > 0


def test_eval_reports_va_as_numpy_computes_it_with_histograms(expr_va, tmp_path):
    from ferlab.analysis.common import load

    ckpt = expr_va["checkpoints"]["best"]
    report = run_eval(_cfg(tmp_path, "eval", f"ckpt_path={ckpt}", "tensorboard=false"))
    va = report["splits"]["test"]["va"]
    loaded = load(_cfg(tmp_path, "eval", f"ckpt_path={ckpt}"))  # the same network and images, predicted here
    dm = loaded.datamodule
    images, _ = dm.splits["test"]
    with torch.no_grad():
        out = torch.cat([loaded.restored.net(dm.transform(x, train=False)) for x in images.split(16)])
    pred, target = out[:, 8:].tanh().double().numpy(), dm.va_for(images).double().numpy()  # head.va_activation
    keep = np.isfinite(target).all(1)
    pred, target = pred[keep], target[keep]
    assert va["num_annotated"] == keep.sum() and 0 < keep.sum() < len(keep)  # a -2 row is left out
    for d, name in enumerate(("valence", "arousal")):
        x, y = pred[:, d], target[:, d]
        cov = np.cov(x, y)
        assert va[name]["ccc"] == pytest.approx(2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (x.mean() - y.mean()) ** 2),
                                                abs=1e-4)
        assert va[name]["pcc"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-4)
        assert va[name]["rmse"] == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), abs=1e-4)
        assert va[name]["sagr"] == pytest.approx(np.mean(np.sign(x) == np.sign(y)), abs=1e-6)
        assert report["metrics"][f"test/ccc_{name}"] == va[name]["ccc"]
        assert report["metrics"][f"test/ccc_{name}"] == pytest.approx(expr_va["test"][f"test/ccc_{name}"], abs=1e-4)
    hist = va["histograms"]
    edges = np.array(hist["edges"])
    want, _, _ = np.histogram2d(np.clip(target[:, 1], -1, 1), np.clip(target[:, 0], -1, 1), bins=[edges, edges])
    np.testing.assert_array_equal(hist["target_valence_arousal"], want)
    assert all(np.sum(hist[k]) == keep.sum() for k in hist if k != "edges")
    out_dir = Path(report["output_dir"])
    assert (out_dir / "va_histogram.png").is_file() and "| valence |" in (out_dir / "report.md").read_text()
    assert report["head"]["columns"] == {"classes": [0, 8], "valence": 8, "arousal": 9}
    assert report["head"]["va_activation"] == "tanh"


def test_predict_and_onnx_export_carry_valence_and_arousal(expr_va, affectnet, tmp_path):
    ckpt = Path(expr_va["checkpoints"]["best"])
    own = tmp_path / "best.ckpt"  # the export lands beside it
    own.write_bytes(ckpt.read_bytes())
    run_export(_cfg(tmp_path, "export", f"ckpt_path={own}", "format=onnx"))
    meta = json.loads({p.key: p.value for p in onnx.load(str(own.with_suffix(".onnx"))).metadata_props}["ferlab"])
    assert meta["head"] == {"kind": "expr_va", "num_classes": 8, "outputs": 10, "va_activation": "tanh",
                            "columns": {"classes": [0, 8], "valence": 8, "arousal": 9}}
    folder = tmp_path / "faces"
    folder.mkdir()
    face = next((affectnet / "val_set" / "images").glob("*.jpg"))
    (folder / face.name).write_bytes(face.read_bytes())
    rows = {}
    for backend in ("torch", "onnx"):
        result = run_predict(_cfg(tmp_path / backend, "predict", f"ckpt_path={own}", f"input={folder}",
                                  f"backend={backend}", "detector=none", "progress=false"))
        with open(result["files"][0], newline="") as f:
            rows[backend] = list(csv.DictReader(f))
    header = list(rows["torch"][0])
    assert header[-2:] == ["valence", "arousal"] and header[7:9] == ["label", "prob"]
    r = restore(own)
    frame = cv2.imread(str(face))
    from ferlab.infer.preprocess import InputSpec, to_model_input

    spec = InputSpec.build(r.in_chans, r.image_size, r.mean, r.std, "auto")
    with torch.no_grad():
        out = r.net(torch.from_numpy(to_model_input(frame, np.array([[0, 0, 32, 32]]), spec, 0.0)))[0]
    for backend in ("torch", "onnx"):
        want = out[8:].tanh().tolist()  # the raw outputs travel; the metadata's head applies tanh
        assert [float(rows[backend][0][k]) for k in ("valence", "arousal")] == pytest.approx(want, abs=1e-4)
        assert rows[backend][0]["label"] == r.class_names[int(out[:8].argmax())]


def test_va_head_alone(affectnet, tmp_path):
    metrics = _train(tmp_path, affectnet, "va", "test=false", "logger=none")
    assert metrics["best"]["monitor"] == "val/ccc_mean" and "val/acc" not in metrics["best_epoch_metrics"]
    assert {f"val/{m}" for m in VA_METRIC_NAMES} <= set(metrics["best_epoch_metrics"])
    ckpt = metrics["checkpoints"]["best"]
    assert restore(ckpt).net(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    report = run_eval(_cfg(tmp_path, "eval", f"ckpt_path={ckpt}", "tensorboard=false"))
    assert {f"test/{m}" for m in VA_METRIC_NAMES} == set(report["metrics"])  # no class metric
    assert "accuracy" not in report["splits"]["test"] and report["splits"]["test"]["va"]["ccc_mean"] == \
        report["metrics"]["test/ccc_mean"]
    assert not (Path(report["output_dir"]) / "confusion_matrix.png").exists()
    face = next((affectnet / "val_set" / "images").glob("*.jpg"))
    result = run_predict(_cfg(tmp_path, "predict", f"ckpt_path={ckpt}", f"input={face}", "detector=none",
                              "progress=false"))
    with open(result["files"][0], newline="") as f:
        assert next(csv.reader(f)) == ["file", "frame", "face", "x", "y", "w", "h", "valence", "arousal"]
