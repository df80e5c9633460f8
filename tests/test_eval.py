"""`ferlab eval` and the report at the end of `ferlab train test=true`: numbers equal scikit-learn's, both
FER2013 test splits, test-time augmentation, and checkpoints that are missing, truncated, GPU-made or foreign."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from sklearn.metrics import classification_report as sk_report
from sklearn.metrics import confusion_matrix as sk_confusion
from torch import nn

from ferlab.analysis.metrics import classification_report
from ferlab.analysis.tta import TestTimeAugment
from ferlab.errors import FerlabError
from ferlab.tasks.evaluate import run_eval
from tests.conftest import REPO, compose_cfg, run_cli


def eval_cfg(tmp_path: Path, *overrides: str):
    return compose_cfg(tmp_path, list(overrides), config_name="eval")


def run_dir(metrics: dict) -> Path:
    return Path(metrics["checkpoints"]["best"]).parent.parent


def tb_image_tags(logdir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"]


def assert_matches_sklearn(preds: np.ndarray, targets: np.ndarray, names: list[str]) -> None:
    ours = classification_report(torch.as_tensor(preds), torch.as_tensor(targets), names)
    scored = np.union1d(preds, targets)  # the classes that occur: what macro averages are over
    ref = sk_report(targets, preds, labels=scored, output_dict=True, zero_division=0)
    assert ours["accuracy"] == pytest.approx(float((preds == targets).mean()), abs=1e-6)
    for avg, key in (("macro", "macro avg"), ("weighted", "weighted avg")):
        for m, sk_m in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert ours[avg][m] == pytest.approx(ref[key][sk_m], abs=1e-6), (avg, m)
    for c, name in enumerate(names):
        row = ours["per_class"][name]
        assert row["support"] == int((targets == c).sum())
        if c not in scored:
            assert row["f1"] is None and row["precision"] is None
            continue
        for m, sk_m in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert row[m] == pytest.approx(ref[str(c)][sk_m], abs=1e-6), (name, m)
    k = len(names)
    np.testing.assert_array_equal(ours["confusion_matrix"], sk_confusion(targets, preds, labels=range(k)))
    normalized = np.nan_to_num(sk_confusion(targets, preds, labels=range(k), normalize="true"))
    np.testing.assert_allclose(ours["confusion_matrix_normalized"], normalized, atol=1e-6)


def test_report_numbers_equal_scikit_learn():
    names = ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(0)
    targets = rng.choice(4, size=300, p=[0.5, 0.3, 0.15, 0.05])  # class e never occurs
    preds = np.where(rng.random(300) < 0.6, targets, rng.choice(3, size=300))  # class d never predicted
    assert_matches_sklearn(preds, targets, names)
    assert_matches_sklearn(targets, targets, names)  # perfect
    preds[:3] = 4  # e predicted but absent from the labels: scored, precision 0
    assert_matches_sklearn(preds, targets, names)


def test_most_confused_pairs_are_ranked_by_count():
    names = ["x", "y", "z"]
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = torch.tensor([1, 1, 1, 0, 2, 1, 1, 0, 0, 2])
    pairs = classification_report(preds, targets, names, top_pairs=2)["most_confused"]
    assert [(p["true"], p["pred"], p["count"]) for p in pairs] == [("x", "y", 3), ("z", "x", 2)]
    assert pairs[0]["rate"] == pytest.approx(0.75)


def test_training_reports_both_test_splits_like_the_logged_metrics(trained):
    run = run_dir(trained)
    report = json.loads((run / "eval" / "report.json").read_text())
    assert list(report["splits"]) == ["test_public", "test_private"]
    for prefix, split in report["splits"].items():
        assert split["accuracy"] == pytest.approx(trained["test"][f"{prefix}/acc"], abs=1e-6)
        assert split["macro"]["f1"] == pytest.approx(trained["test"][f"{prefix}/f1_macro"], abs=1e-6)
        assert split["num_images"] == trained["dataset"]["sizes"][prefix]
        assert split["validation_split"] is False  # validation was carved from train
        assert np.asarray(split["confusion_matrix"]).sum() == split["num_images"]
    md = (run / "eval" / "report.md").read_text()
    assert "## test_public" in md and "## test_private" in md and "| disgust |" in md
    assert (run / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "eval/confusion_matrix" in tb_image_tags(run / "tensorboard")


def test_training_report_reuses_the_test_pass_unless_the_test_was_limited(make_cfg, monkeypatch):
    import ferlab.analysis.report as eval_report
    from ferlab.tasks.train import run_train

    full_pass = eval_report.predict_split
    monkeypatch.setattr(eval_report, "predict_split", lambda *a, **k: pytest.fail("test split predicted twice"))
    tiny = ["data.source.num_images=300", "trainer.limit_train_batches=2", "logger=none"]
    metrics = run_train(make_cfg(*tiny))
    (split,) = json.loads((run_dir(metrics) / "eval" / "report.json").read_text())["splits"].values()
    assert split["accuracy"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
    assert split["num_images"] == metrics["dataset"]["sizes"]["test"]
    calls = []
    monkeypatch.setattr(eval_report, "predict_split", lambda *a, **k: calls.append(1) or full_pass(*a, **k))
    limited = run_train(make_cfg(*tiny, "data.eval_batch_size=8", "trainer.limit_test_batches=1"))
    (split,) = json.loads((run_dir(limited) / "eval" / "report.json").read_text())["splits"].values()
    assert calls and split["num_images"] == limited["dataset"]["sizes"]["test"] > 8  # the whole split, as before


def cli_in_process(monkeypatch, cwd: Path, *args: str) -> int | str | None:
    """`ferlab <args>` through the real CLI entry (cli.main -> Hydra -> guarded) in this process; its exit code."""
    from ferlab.cli import main

    monkeypatch.setenv("FERLAB_ROOT", str(cwd))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main replaces it
    GlobalHydra.instance().clear()
    try:
        main(list(args))
    except SystemExit as e:
        return e.code
    finally:
        GlobalHydra.instance().clear()
    return 0


def test_eval_cli_split_tta_and_tensorboard(trained, tmp_path, monkeypatch, capsys):
    ckpt = trained["checkpoints"]["best"]
    code = cli_in_process(monkeypatch, tmp_path, "eval", f"ckpt_path={ckpt}", "split=val", "tta=ten_crop",
                          "tta.crop_size=40")
    assert code == 0
    out = run_dir(trained) / "eval" / "val-tta_ten_crop40"  # what differs from the training-time report
    report = json.loads((out / "report.json").read_text())
    assert report["tta"] == {"mode": "ten_crop", "views": 10, "crop_size": 40, "resize": True}
    assert list(report["splits"]) == ["val"] and report["splits"]["val"]["num_images"] == trained["dataset"]["sizes"]["val"]
    assert "val/acc" in report["metrics"] and "ferlab eval" in capsys.readouterr().out
    assert "eval/confusion_matrix" in tb_image_tags(out / "tensorboard")


def test_changed_data_and_a_test_split_that_also_validates(trained, tmp_path):
    # the stored data with +data.* changes: PublicTest now validates, so its score is flagged as optimistic
    cfg = eval_cfg(tmp_path, f"ckpt_path={trained['checkpoints']['best']}", "+data.split=official", "tensorboard=false")
    report = run_eval(cfg)
    assert Path(report["output_dir"]) == run_dir(trained) / "eval" / "data_synthetic"
    assert report["splits"]["test_public"]["validation_split"] is True
    assert report["splits"]["test_private"]["validation_split"] is False
    assert "selected on this split" in (Path(report["output_dir"]) / "report.md").read_text()


def test_ten_crop_views_and_softmax_average():
    x = torch.rand(2, 3, 8, 8)
    views = TestTimeAugment("ten_crop", crop_size=6, resize=False).views(x)
    assert len(views) == 10 and all(v.shape == (2, 3, 6, 6) for v in views)
    torch.testing.assert_close(views[0], x[..., :6, :6])  # top-left corner
    torch.testing.assert_close(views[3], x[..., 2:, 2:])  # bottom-right corner
    torch.testing.assert_close(views[4], x[..., 1:7, 1:7])  # centre
    torch.testing.assert_close(views[5], x.flip(-1)[..., :6, :6])  # mirror image's top-left
    resized = TestTimeAugment("ten_crop", crop_size=6).views(x)
    assert all(v.shape == x.shape for v in resized)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    for mode in ("none", "flip", "ten_crop"):
        tta = TestTimeAugment(mode, crop_size=6)
        expected = torch.stack([net(v).softmax(1) for v in tta.views(x)]).mean(0)
        probs = tta(net, x)
        torch.testing.assert_close(probs, expected)
        torch.testing.assert_close(probs.sum(1), torch.ones(2))
    with pytest.raises(FerlabError, match="crop must fit"):
        TestTimeAugment("ten_crop", crop_size=9).views(x)
    with pytest.raises(FerlabError, match="tta: expected"):
        TestTimeAugment("five_crop")


def gpu_tagged_copy(ckpt: Path, dest: Path, monkeypatch) -> Path:
    """The checkpoint re-saved with every storage tagged `cuda:0`, as a GPU training run writes it."""
    import torch.serialization

    checkpoint = torch.load(ckpt, weights_only=True, map_location="cpu")
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, dest)
    return dest


def test_gpu_checkpoint_loads_on_cpu_weights_only(trained, tmp_path, monkeypatch):
    gpu = gpu_tagged_copy(Path(trained["checkpoints"]["best"]), tmp_path / "gpu.ckpt", monkeypatch)
    if not torch.cuda.is_available():  # the file really demands a GPU unless mapped
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu, weights_only=True)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    report = run_eval(eval_cfg(tmp_path, f"ckpt_path={gpu}", "device=cpu", "tensorboard=false"))
    assert calls and all(k.get("weights_only") is True and k.get("map_location") == "cpu" for k in calls)
    train_report = json.loads((run_dir(trained) / "eval" / "report.json").read_text())
    assert report["metrics"] == pytest.approx(train_report["metrics"], abs=1e-6)
    assert Path(report["output_dir"]) == tmp_path / "run"  # a checkpoint outside a run dir: this task's run dir


def test_missing_truncated_and_mismatched_checkpoints(trained, tmp_path):
    with pytest.raises(FerlabError, match="checkpoint not found"):
        run_eval(eval_cfg(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}"))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(Path(trained["checkpoints"]["best"]).read_bytes()[:4000])
    with pytest.raises(FerlabError, match="cannot be loaded"):
        run_eval(eval_cfg(tmp_path, f"ckpt_path={cut}"))
    with pytest.raises(FerlabError, match="split: expected"):
        run_eval(eval_cfg(tmp_path, f"ckpt_path={cut}", "split=tset"))
    with pytest.raises(FerlabError, match=r"classes \(synthetic: angry, .*\) and the data's \(folder: a, .*g\) share 0"):
        # 7 classes, but not FER2013's: none to match by name (cross-dataset eval)
        run_eval(eval_cfg(tmp_path, f"ckpt_path={trained['checkpoints']['best']}", "data=folder",
                          "data.class_names=[a,b,c,d,e,f,g]"))


def test_cli_errors_are_one_line(trained, tmp_path, monkeypatch, capsys):
    r = run_cli("eval", "ckpt_path=nope/best.ckpt", cwd=tmp_path)  # a real process: exit status and stderr
    assert r.returncode == 1 and r.stderr.strip() == "ferlab: error: checkpoint not found: nope/best.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(Path(trained["checkpoints"]["best"]).read_bytes()[:4000])
    ckpt = trained["checkpoints"]["best"]
    for args, message in (((f"ckpt_path={ckpt}", "data=folder", "data.class_names=[a,b]"), "share 0 by name"),
                          ((f"ckpt_path={cut}",), "cannot be loaded"),
                          ((f"ckpt_path={ckpt}", "tta=ten_crop", "tta.crop_size=0"), "tta.crop_size must be")):
        capsys.readouterr()
        assert cli_in_process(monkeypatch, tmp_path, "eval", *args) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("ferlab: error: ") and message in err and "\n" not in err, err


def test_help_does_not_import_torch():
    code = ("import sys\nfrom ferlab.cli import main\n"
            "for args in (['eval', '--help'], ['explain', '--cfg', 'job']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print('HEAVY', [m for m in ('torch', 'pytorch_lightning') if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "HEAVY []" in r.stdout and "ferlab eval" in r.stdout and "method: all" in r.stdout, r.stdout[-2000:]


def test_eval_tests_as_the_run_was_tested_and_never_replaces_that_report(trained, tmp_path):
    """A run tested with tta=flip after training: a plain `ferlab eval` uses the checkpoint's (stored) TTA and
    writes <run>/eval/; another TTA goes to its own folder (tta_none, tta_ten_crop40_noresize)."""
    import shutil

    run = tmp_path / "run_copy"
    shutil.copytree(run_dir(trained), run, ignore=shutil.ignore_patterns("eval", "tensorboard"))
    best = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["hyper_parameters"]["config"]["tta"] = {"_target_": "ferlab.analysis.tta.TestTimeAugment",
                                                       "mode": "flip", "crop_size": None, "resize": True}
    torch.save(checkpoint, best)
    plain = run_eval(eval_cfg(tmp_path, f"ckpt_path={best}", "tensorboard=false"))
    assert plain["tta"]["mode"] == "flip" and Path(plain["output_dir"]) == run / "eval"
    none = run_eval(eval_cfg(tmp_path, f"ckpt_path={best}", "tensorboard=false", "tta=none"))
    assert Path(none["output_dir"]) == run / "eval" / "tta_none"
    crops = run_eval(eval_cfg(tmp_path, f"ckpt_path={best}", "tensorboard=false", "tta=ten_crop", "tta.crop_size=40",
                              "tta.resize=false"))
    assert Path(crops["output_dir"]) == run / "eval" / "tta_ten_crop40_noresize"
    checkpoint["hyper_parameters"]["config"]["tta"] = {"_target_": "builtins.open", "file": str(tmp_path / "x")}
    torch.save(checkpoint, best)
    with pytest.raises(FerlabError, match="refused tta._target_"):
        run_eval(eval_cfg(tmp_path, f"ckpt_path={best}", "tensorboard=false"))
    assert not (tmp_path / "x").exists()
