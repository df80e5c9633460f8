"""`seed=S trainer.deterministic=true`: two CPU runs write the same metrics.json (every number of every epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ferlab.tasks.train import run_train

VARYING = ("wall_time_s", "checkpoints")  # clock time and the run's own paths
SMALL = ["data.source.num_images=200", "data.batch_size=32"]  # 5 steps an epoch, 20 faces to validate and test


@pytest.fixture(autouse=True)
def restore_determinism_flag():
    """Lightning switches torch.use_deterministic_algorithms on for the process; switch it back afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _metrics(make_cfg, tmp_path: Path, name: str, seed: int) -> dict:
    cfg = make_cfg(*SMALL, "trainer.max_epochs=2", "trainer.deterministic=true", f"seed={seed}", "augment=default",
                   "model.drop_rate=0.2", f"paths.output_dir={tmp_path / name}")
    run_train(cfg)
    saved = json.loads((tmp_path / name / "metrics.json").read_text())
    return {k: v for k, v in saved.items() if k not in VARYING}


def test_same_seed_same_metrics_json_and_another_seed_differs(make_cfg, tmp_path):
    first = _metrics(make_cfg, tmp_path, "a", seed=11)
    second = _metrics(make_cfg, tmp_path, "b", seed=11)
    assert torch.are_deterministic_algorithms_enabled()
    assert first == second
    assert len(first["history"]) == 2 and first["test"]  # train, val and test numbers all compared
    other = _metrics(make_cfg, tmp_path, "c", seed=12)
    assert other["history"] != first["history"]  # the seed does reach shuffling, augmentation and dropout


def test_channels_last_speed_option_trains_with_nhwc_weights(make_cfg, tmp_path):
    # the option benchmarks/overhead.py measures: weights stored channels-last, same training otherwise
    cfg = make_cfg(*SMALL, "trainer.limit_train_batches=2", "+callbacks.channels_last._target_=ferlab.lit.speed.ChannelsLast",
                   "test=false")
    metrics = run_train(cfg)
    weights = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    conv = next(v for v in weights.values() if v.ndim == 4 and v.shape[1] > 1)  # 1 channel: both layouts agree
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert metrics["epochs"] == 1 and metrics["history"][0]["train/loss"] > 0
