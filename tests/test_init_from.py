"""init_from: a run starts from another run's network weights only (FER2013 7 classes -> FER+ 8: backbone loaded,
head re-initialised, both reported in metrics.json), run dirs and last:<task_name> resolve to the right checkpoint,
bad values are one line, and a resumed run ignores it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from ferlab.checkpoints.ckpt_file import load_checkpoint
from ferlab.checkpoints.init_from import resolve_init_from
from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv
from ferlab.data.writers import ferplus_votes, write_ferplus_csv
from ferlab.errors import FerlabError
from tests.conftest import INFER_RUN, compose_cfg

# the session checkpoint's network (conftest INFER_RUN: resnet18_small at width 8), one short epoch
TINY = ["model.width=8", "data.batch_size=32", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "callbacks.rich_progress_bar=null",
        "callbacks.rich_model_summary=null", "logger=none", "test=false"]


@pytest.fixture(scope="module")
def ferplus(tmp_path_factory) -> list[str]:
    """Overrides for a tiny synthetic FER+ (8 classes) run."""
    root = tmp_path_factory.mktemp("ferplus")
    images, labels, usage = make_dataset(SynthSpec(num_images=160, seed=3), cover_classes=True)
    votes, names = ferplus_votes(labels, seed=3)
    write_fer2013_csv(root / "fer2013.csv", images, labels, usage)
    write_ferplus_csv(root / "fer2013new.csv", votes, usage, names)
    return ["data=ferplus", f"data.source.csv_path={root / 'fer2013.csv'}",
            f"data.source.ferplus_path={root / 'fer2013new.csv'}"]


def test_seven_class_run_initialises_an_eight_class_run(ckpt, ferplus, tmp_path):
    """The backbone is the 7-class checkpoint's; the 8-class head keeps its fresh init; metrics.json says so."""
    from ferlab.tasks.train import build, run_train

    overrides = [*TINY, *ferplus, f"init_from={ckpt}"]
    source = {k.removeprefix("net."): v for k, v in load_checkpoint(ckpt)["state_dict"].items() if k.startswith("net.")}
    net = build(compose_cfg(tmp_path / "build", overrides))["model"].net
    for key, value in net.state_dict().items():
        if key.startswith("head."):
            assert value.shape[0] == 8 and source[key].shape[0] == 7
        else:
            assert torch.equal(value, source[key]), key
    report = run_train(compose_cfg(tmp_path, overrides))["weights"]["init_from"]
    assert report["source"] == str(ckpt.resolve()) and report["loaded"] == report["total"] - 2
    assert report["skipped"] == {"head": "head.weight is 8x64, 7x64 in the source"}
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["weights"] == {"init_from": report}


def _fake_run(task_dir: Path, name: str, ckpt: Path, age: float, *, failed: bool = False, files=("best.ckpt",)) -> Path:
    """A run directory with the given checkpoint files and a metrics.json `age` seconds old."""
    run = task_dir / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    for file in files:
        shutil.copy(ckpt, run / "checkpoints" / file)
    (run / "metrics.json").write_text("{}")
    os.utime(run / "metrics.json", (1e9 - age, 1e9 - age))
    if failed:
        (run / "failed.json").write_text("{}")
    return run


def test_run_dirs_and_last_task_resolve_to_a_finished_runs_checkpoint(ckpt, make_cfg, tmp_path):
    task = tmp_path / "outputs" / "pre"
    old = _fake_run(task, "old", ckpt, age=300)
    last_only = _fake_run(task, "last_only", ckpt, age=200, files=("last.ckpt",))
    _fake_run(task, "crashed", ckpt, age=0, failed=True)  # newest, but it failed
    (task / "runs" / "running" / "checkpoints").mkdir(parents=True)  # no metrics.json: not finished
    shutil.copy(ckpt, task / "runs" / "running" / "checkpoints" / "best.ckpt")
    assert resolve_init_from(make_cfg("init_from=last:pre")) == last_only / "checkpoints" / "last.ckpt"
    assert resolve_init_from(make_cfg(f"init_from={old}")) == old / "checkpoints" / "best.ckpt"
    assert resolve_init_from(make_cfg("init_from=null")) is None


@pytest.mark.parametrize("value, match", [
    ("last:nothing", "init_from=last:nothing: no finished run with a checkpoint under"),
    ("last:", "needs a task name"),
    ("missing.ckpt", "no such checkpoint file or run directory"),
    ("empty_run", "run directory has no checkpoints/best.ckpt or checkpoints/last.ckpt"),
])
def test_bad_init_from_is_one_line(make_cfg, tmp_path, value, match):
    (tmp_path / "empty_run").mkdir()
    value = value if value.startswith("last:") else str(tmp_path / value)
    with pytest.raises(FerlabError, match=match):
        resolve_init_from(make_cfg(f"init_from={value}"))


def test_weights_of_another_network_fail_in_one_line(ckpt, make_cfg):
    from ferlab.tasks.train import build

    with pytest.raises(FerlabError) as err:
        build(make_cfg(f"init_from={ckpt}", "model=lenet7", fast=False))  # the checkpoint holds a resnet18_small
    assert "\n" not in str(err.value) and f"{ckpt.resolve()} does not fit VGG" in str(err.value)


def test_a_resumed_run_ignores_init_from(ckpt, tmp_path):
    from ferlab.tasks.train import run_train

    # last:never_ran would fail if it were resolved: resuming takes everything from the checkpoint
    metrics = run_train(compose_cfg(tmp_path, [*INFER_RUN, "trainer.max_epochs=2", f"ckpt_path={ckpt}",
                                               "init_from=last:never_ran"]))
    assert metrics["epochs"] == 2 and metrics["weights"] == {}


def test_report004_two_stages_chain_by_task_name(tmp_path):
    """experiment=report004_finetune finds the pre-training's checkpoint through last:report004_pretrain."""
    from ferlab.config.runner import compose_run
    from ferlab.tasks.train import run_train

    tiny = ["data=synthetic", "data.source.num_images=200", "data.batch_size=16", "model.layers=2", "model.channels=8",
            *TINY[2:]]

    def stage(name: str) -> dict:  # run dirs where Hydra puts them: <log_dir>/<task_name>/runs/<run>
        run_dir = tmp_path / "outputs" / name / "runs" / "r1"
        return run_train(compose_run("train", [f"paths.root_dir={tmp_path}", f"experiment={name}", *tiny], run_dir))

    pretrain = stage("report004_pretrain")
    report = stage("report004_finetune")["weights"]["init_from"]
    assert report["source"] == pretrain["checkpoints"]["best"] and report["loaded"] == report["total"]
