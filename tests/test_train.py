"""`ferlab train` end to end on CPU: fast_dev_run, a real 2-epoch run and its files, learning, resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ferlab.tasks.train import run_train


def test_fast_dev_run_on_cpu(make_cfg):
    cfg = make_cfg("debug=fdr", "trainer=cpu")
    metrics = run_train(cfg)
    assert metrics["global_step"] == 1
    assert set(metrics["test"]) >= {"test/acc", "test/f1_macro", "test/loss"}
    assert (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_two_epochs_write_every_run_file(make_cfg):
    cfg = make_cfg("trainer.max_epochs=2")
    metrics = run_train(cfg)
    run = Path(cfg.paths.output_dir)
    history = metrics["history"]
    assert [r["epoch"] for r in history] == [0, 1]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["best"]["monitor"] == "val/acc" and saved["best"]["epoch"] in (0, 1)
    best = max(history, key=lambda r: r["val/acc"])  # the first of equals: the checkpoint callback keeps the first
    assert saved["best"]["epoch"] == best["epoch"] and saved["best_epoch_metrics"]["val/acc"] == best["val/acc"]
    assert saved["dataset"]["sizes"] == {"train": 480, "val": 60, "test": 60}
    assert saved["wall_time_s"] > 0 and 0 <= saved["test"]["test/acc"] <= 1
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run / "checkpoints" / name, weights_only=True, map_location="cpu")
        assert ckpt["hyper_parameters"]["num_classes"] == 7
        assert ckpt["hyper_parameters"]["config"]["model"]["_target_"].endswith("resnet18_small")
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/f1_macro", "lr-Adam"):
        assert key in history[-1], key
    assert "test/f1/happy" in saved["test"]


# One fixed batch of 64 faces, no augmentation, 20 Adam steps (debug=overfit): the loss falls ~100-fold and every
# face is classified right on any correct float implementation (margins: benchmarks/results/learning_margins.md).
MEMORISE = ["debug=overfit", "trainer.overfit_batches=1", "data.batch_size=64", "trainer.max_epochs=20",
            "optim.lr=0.003", "logger=none"]
MEMORISED_LOSS_RATIO = 0.05


def test_the_classifier_memorises_64_faces(make_cfg):
    history = run_train(make_cfg(*MEMORISE))["history"]
    first, last = history[0], history[-1]
    assert len(history) == 20 and first["train/acc"] < 0.5
    assert last["train/loss"] < MEMORISED_LOSS_RATIO * first["train/loss"] and last["train/acc"] == 1.0, history


def test_resume_from_last_checkpoint_continues_at_next_epoch(make_cfg, tmp_path):
    first = run_train(make_cfg("trainer.max_epochs=1", "test=false"))
    last = first["checkpoints"]["last"]
    assert Path(last).exists()
    cfg = make_cfg("trainer.max_epochs=2", f"ckpt_path={last}", "test=false", "hydra.run.dir=" + str(tmp_path / "run2"))
    resumed = run_train(cfg)
    assert [r["epoch"] for r in resumed["history"]] == [0, 1]  # epoch 0 carried over, then only epoch 1 trained
    assert resumed["global_step"] == 2 * first["global_step"]
