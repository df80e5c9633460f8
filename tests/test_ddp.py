"""Distributed presets: ddp_sim really trains and evaluates with 2 spawned CPU processes and its metrics equal a
single process's on the same weights; ddp and ddp_multinode are composed and wired as far as a CPU box can honestly
check (the strategy object, and Lightning's SLURM detection with a faked 2-node environment)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from lightning_utilities.core.rank_zero import rank_zero_only
from pytorch_lightning.callbacks import Callback

from ferlab.checkpoints.ddp import DDPStrategy
from ferlab.config import runner
from ferlab.errors import FerlabError
from ferlab.tasks.train import build, run_train


def _single_process_metrics(make_cfg, run: Path, ckpt: str, stage: str) -> dict[str, float]:
    """Evaluate a checkpoint of the DDP run with one process on the same data."""
    parts = build(make_cfg("trainer=cpu", "logger=none", f"paths.output_dir={run.parent / 'single'}",
                           "data.source.num_images=610"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    evaluate = trainer.validate if stage == "val" else trainer.test
    results = evaluate(parts["model"], datamodule=parts["datamodule"], ckpt_path=ckpt, verbose=False,
                       weights_only=True)
    return {k: v for r in results for k, v in r.items()}


def test_ddp_sim_spawn_trains_and_its_val_metrics_equal_one_process(make_cfg):
    # 610 faces: 488 train, 61 val, 61 test; odd eval splits, so padded shards would count an image twice
    cfg = make_cfg("trainer=ddp_sim", "data.source.num_images=610", "test=false")
    run = Path(cfg.paths.output_dir)
    metrics = run_train(cfg)

    assert metrics["epochs"] == 1 and metrics["global_step"] == 3  # 244 images per rank, batches of 64
    assert metrics["dataset"]["sizes"] == {"train": 488, "val": 61, "test": 61}
    assert [r["epoch"] for r in metrics["history"]] == [0] and metrics["best"]["epoch"] == 0
    val = _single_process_metrics(make_cfg, run, str(run / "checkpoints" / "last.ckpt"), "val")
    for name in ("val/acc", "val/f1_macro", "val/loss"):
        assert metrics["history"][0][name] == pytest.approx(val[name], abs=1e-6), name
    # rank 0 alone wrote the run files: one metrics.json, the two checkpoints, no second logger version
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not list(run.rglob("version_*")) and not (run / "failed.json").exists()


def test_ddp_sim_test_metrics_equal_one_process(make_cfg):
    # the same launcher with fork instead of spawn (the spawn path is covered above; fork starts in a second);
    # one training step is enough to have weights to test, on all 61 test faces
    cfg = make_cfg("trainer=ddp_sim", "trainer.strategy.start_method=fork", "data.source.num_images=610",
                   "trainer.limit_train_batches=1")
    run = Path(cfg.paths.output_dir)
    metrics = run_train(cfg)
    test = _single_process_metrics(make_cfg, run, metrics["checkpoints"]["best"], "test")
    assert set(test) == set(metrics["test"])
    for name, value in test.items():
        assert metrics["test"][name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.parametrize("preset,backend", [("ddp", "nccl"), ("ddp_multinode", "nccl"), ("ddp_sim", "gloo")])
def test_presets_build_ferlab_ddp_strategy(make_cfg, preset, backend):
    cfg = make_cfg(f"trainer={preset}")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DDPStrategy) and strategy.process_group_backend == backend
    assert cfg.trainer.accelerator == ("cpu" if preset == "ddp_sim" else "gpu")


def test_ddp_multinode_is_one_rank_per_slurm_task(make_cfg, monkeypatch):
    # rank 3 of a 2-node x 2-task SLURM job: Lightning must take ranks from SLURM and launch nothing itself
    slurm = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
             "SLURM_NODEID": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ferlab", "SLURM_NODELIST": "node[1-2]"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    # the Trainer sets the process-global rank_zero_only.rank to 3; restore it, or later tests log nothing
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    cfg = make_cfg("trainer=ddp_multinode", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.precision=32-true", "trainer.sync_batchnorm=false",
                   "trainer.strategy.process_group_backend=gloo", "logger=none")
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.num_nodes, trainer.world_size, trainer.global_rank, trainer.local_rank) == (2, 4, 3, 1)
    assert trainer.strategy.cluster_environment.creates_processes_externally  # the launcher starts no process
    assert not trainer.is_global_zero
    assert not runner._rank_zero()  # so failed.json is left to rank 0 as well


class FailOnRank(Callback):
    """Raises a FerlabError on one rank when training starts; the other rank waits in the first gradient sync."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == self.rank:
            raise FerlabError(f"simulated user error on rank {self.rank}")


NO_VAL_BATCH = "trainer.limit_val_batches=0.1 selects no val batch"


@pytest.mark.parametrize("where,overrides,expected", [
    ("one process", ["trainer=cpu", "trainer.limit_val_batches=0.1"], NO_VAL_BATCH),
    ("every rank", ["trainer=ddp_sim", "trainer.limit_val_batches=0.1"], NO_VAL_BATCH),
    ("rank 1 only", ["trainer=ddp_sim", "+callbacks.boom._target_=tests.test_ddp.FailOnRank", "+callbacks.boom.rank=1"],
     "rank 1: simulated user error on rank 1"),
])
def test_a_mistake_in_a_worker_is_one_line(make_cfg, capfd, where, overrides, expected):
    # val: 60 images, 30 per rank: one batch, and 0.1 of one batch is none (Lightning's MisconfigurationException)
    cfg = make_cfg(*overrides, "trainer.strategy.start_method=fork" if "ddp_sim" in overrides[0] else "seed=1")
    with pytest.raises(SystemExit) as info:
        runner.guarded(run_train, cfg)
    err = capfd.readouterr().err  # the file descriptor: what the worker processes print too
    lines = [line for line in err.splitlines() if line.startswith("ferlab: error:")]
    assert info.value.code == 1 and len(lines) == 1 and expected in lines[0], err[-3000:]
    assert "Traceback" not in err
    failed = json.loads((Path(cfg.paths.output_dir) / "failed.json").read_text())
    assert failed["type"] == "FerlabError" and failed["message"] == lines[0].removeprefix("ferlab: error: ")



def test_sigterm_to_the_workers_saves_says_where_in_one_line_and_resumes_exactly(make_cfg, capfd, tmp_path):
    """SLURM's SIGTERM reaches every task: the workers save last.ckpt at the same step and exit 143; the main
    process says where they stopped (read from the checkpoint they wrote) and how to resume, in one line; the
    resume's history and weights equal a run never stopped."""
    import signal

    from ferlab.checkpoints.ckpt_file import load_checkpoint
    from ferlab.runs.runfiles import LAST
    from tests.test_resume import EXACT, SMALL, _same_weights

    # 200 faces: 80 training faces per rank, 2 steps of 32 an epoch; step 5 is inside the last epoch
    ddp = ["trainer=ddp_sim", "trainer.strategy.start_method=fork", *SMALL, *EXACT]
    uninterrupted = run_train(make_cfg(*ddp, f"paths.output_dir={tmp_path / 'uninterrupted'}"))
    run = tmp_path / "run"
    cfg = make_cfg(*ddp, f"paths.output_dir={run}", "+callbacks.sig._target_=tests.test_resume.SignalAtStep",
                   "+callbacks.sig.step=5", f"+callbacks.sig.signum={int(signal.SIGTERM)}")
    with pytest.raises(SystemExit) as info:
        runner.guarded(run_train, cfg)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ferlab: error:")]
    assert info.value.code == 143 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    saved = load_checkpoint(run / LAST)
    assert saved["global_step"] == 5 and uninterrupted["global_step"] > 5
    assert "stopped by SIGTERM (rank" in lines[0] and f"at epoch {saved['epoch']}, step 5;" in lines[0]
    assert lines[0].endswith(f"resume with ckpt_path={run}")

    resumed = run_train(make_cfg(*ddp, f"ckpt_path={run}", f"paths.output_dir={tmp_path / 'resumer'}"))
    assert resumed["history"] == uninterrupted["history"]
    assert _same_weights(run / LAST, tmp_path / "uninterrupted" / LAST)
