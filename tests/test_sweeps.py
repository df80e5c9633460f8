"""Sweeps as users run them: joblib and submitit launchers, Optuna with its SQLite study, failing jobs. Each
`ferlab train -m` is its own process: forked from a preloaded server (conftest.ferlab_cli), or a new interpreter
for the joblib launcher."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ferlab.search.sweep import NO_DATA_HINT
from tests.conftest import run_cli

TINY = ["data.source.num_images=200", "model.width=8", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
        "data.batch_size=16", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
QUIET = [*TINY, "logger=none", "test=false"]
# Optuna's grid over one failing and one working learning rate, instead of the preset's TPE space
GRID = ["~hydra.sweeper.sampler.seed", "~hydra.sweeper.sampler.n_startup_trials",
        "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler", "+hydra.sweeper.sampler._partial_=true",
        "~hydra.sweeper.params"]


def _sweep(root: Path, task: str = "train") -> Path:
    (sweep,) = [p for p in (root / "outputs" / task / "multiruns").iterdir() if p.is_dir()]
    return sweep


def _report_json(*dirs: Path) -> dict:
    r = run_cli("report", *map(str, dirs), "--format", "json", "--no-write", cwd=dirs[0])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _tensorboard_runs(logdir: Path) -> list[str]:
    """The run names `tensorboard --logdir <logdir>` lists: each folder with events, relative to the logdir."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    return sorted(EventMultiplexer().AddRunsFromDirectory(str(logdir)).Runs())


def _hparams(events: Path) -> tuple[dict, dict]:
    """The HPARAMS session of a run's TensorBoard events: hyperparameters, and the hp/* scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(events))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    params = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"] if tag.startswith("hp/")}
    return params, scalars


def test_joblib_2x2_makes_four_runs_and_a_four_row_report(tmp_path):
    # two workers start at once on a fresh data dir: both need the synthetic CSV and its cache first. A new
    # interpreter (run_cli): joblib's loky workers hang the exit of a process forked from ferlab_cli's server
    r = run_cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim=adam,sgd",
                "model.drop_rate=0.0,0.2", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = _sweep(tmp_path)
    runs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert [p.name for p in runs] == ["0", "1", "2", "3"]
    table = [line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model.drop_rate | optim | n |") and len(table) == 1 + 4  # header, 4 rows
    data = _report_json(sweep)
    assert len(data["rows"]) == 4 and data["failed"] == []
    for row in data["rows"]:
        (run,) = row["runs"]
        saved = json.loads((Path(run) / "metrics.json").read_text())
        assert row["metrics"]["val/acc"]["mean"] == saved["best_epoch_metrics"]["val/acc"]
        assert row["metrics"]["test/acc"]["mean"] == saved["test"]["test/acc"]
        assert row["metrics"]["test/f1_macro"]["mean"] == saved["test"]["test/f1_macro"]
    names = [f"{job}/tensorboard/model.drop_rate={p},optim={o}" for job, (o, p) in
             enumerate([("adam", "0.0"), ("adam", "0.2"), ("sgd", "0.0"), ("sgd", "0.2")])]
    assert _tensorboard_runs(sweep) == names  # each run named by the swept overrides, not the common ones
    params, scalars = _hparams(sweep / names[3])  # the same numbers in TensorBoard's HPARAMS view, with the overrides
    saved = json.loads((runs[3] / "metrics.json").read_text())
    assert params["optim"] == "sgd" and params["model.drop_rate"] == pytest.approx(0.2)
    assert scalars["hp/val/acc"] == pytest.approx(saved["best_epoch_metrics"]["val/acc"])
    assert scalars["hp/test/acc"] == pytest.approx(saved["test"]["test/acc"])


def test_tensorboard_run_names_keep_swept_keys_and_shorten_long_values():
    from ferlab.search.tbname import run_name

    job = ["seed=1", "optim.lr=0.000123456789", 'data.source.root="/data/数据 集/fer5/"', "trainer.max_epochs=2",
           "+tags=" + "x" * 40]
    assert run_name(job, {"optim.lr", "data.source.root", "tags", "seed"}) == (
        "data.source.root=fer5,optim.lr=0.0001235,seed=1,tags=xxxxxxxxxxx..xxxxxxxxxxx")
    assert run_name(["b=2", "a=1"], set()) == "a=1,b=2"  # no sweep information: every override


def test_failing_jobs_do_not_stop_the_sweep_and_are_reported(ferlab_cli, tmp_path):
    # job 0: a bad value (batch size 0); job 1 works; job 2: bad value; job 3: SystemExit(3) inside the job
    boom = "{_target_:sys.exit,_args_:[3]}"
    fixed = [a for a in QUIET if not a.startswith("data.batch_size")]
    r = ferlab_cli("train", "-m", f"+callbacks.boom=null,{boom}", "data.batch_size=0,16", *fixed,
                   cwd=tmp_path).result(300)
    assert r.returncode == 1
    sweep = _sweep(tmp_path)
    assert (sweep / "1" / "metrics.json").exists()
    for job, kind in (("0", "FerlabError"), ("2", "FerlabError"), ("3", "SystemExit")):
        assert json.loads((sweep / job / "failed.json").read_text())["type"] == kind
    assert "3 of 4 jobs failed" in r.stderr and "data.batch_size=0" in r.stderr and "SystemExit: 3" in r.stderr
    assert "Traceback" not in r.stderr and NO_DATA_HINT not in r.stderr  # not all of them for missing data
    data = _report_json(sweep)
    assert len(data["rows"]) == 1 and len(data["failed"]) == 3
    assert "### Failed runs" in (sweep / "report.md").read_text()


def test_a_sweep_failing_only_for_missing_datasets_hints_at_synthetic_data(ferlab_cli, tmp_path):
    # the Lightning-Hydra template's habit on a fresh clone: its experiments with debug=fdr, no dataset on disk
    r = ferlab_cli("train", "-m", "experiment=report001_resnet18_fer2013,report004_lenet7_ferplus", "debug=fdr",
                   cwd=tmp_path).result(300)
    assert r.returncode == 1 and "2 of 2 jobs failed" in r.stderr and "fer2013.csv does not exist" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == NO_DATA_HINT


def test_submitit_local_runs_a_two_job_sweep(ferlab_cli, tmp_path):
    r = ferlab_cli("train", "-m", "hydra/launcher=submitit_local", "seed=1,2", *QUIET, cwd=tmp_path).result(300)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = _sweep(tmp_path)
    assert all((sweep / job / "metrics.json").exists() for job in ("0", "1"))
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # each job ran as its own process
    (row,) = _report_json(sweep)["rows"]  # seed is the only difference: one row, n = 2
    assert row["n"] == 2 and sorted(row["seeds"]) == ["1", "2"]


def _study(db: Path, name: str = "train_synthetic"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_optuna_returns_best_parameters_and_resumes_its_sqlite_study_after_a_crash(ferlab_cli, tmp_path):
    from optuna.trial import TrialState

    # heartbeats every second: the killed trial is stale 2 s after the kill, long before the second command asks
    args = ["train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.heartbeat_interval=1",
            *QUIET]
    proc = ferlab_cli(*args, cwd=tmp_path)
    runs = tmp_path / "outputs" / "train" / "multiruns"
    deadline = time.time() + 240
    while not list(runs.glob("*/1/.hydra")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the crash: trial 0 told, trial 1 running
    proc.wait()
    db = tmp_path / "outputs" / "optuna" / "train_synthetic.db"
    before = _study(db).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]

    # a new sweep dir (run id) for the second command
    r = ferlab_cli(*args, cwd=tmp_path, env={"FERLAB_RUN_ID": "resumed"}).result(300)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = _study(db).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 1]  # failed by heartbeat, run again
    assert retry.params == before[1].params and trials[0].params == before[0].params
    (second,) = [p for p in runs.iterdir() if p.name.endswith("resumed")]
    assert sorted(p.name for p in second.iterdir() if p.is_dir()) == ["2", "3"]  # job number = trial number
    results = yaml.safe_load((second / "optimization_results.yaml").read_text())
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert results["best_params"] == best.params and results["best_value"] == best.value
    assert set(best.params) == {"optim.lr", "optim.weight_decay", "model.drop_rate"}  # the preset's space...
    assert best.user_attrs["data.batch_size"] == "16"  # ...minus what the command line fixed
    assert results["trials"] == {"complete": 3, "pruned": 0, "fail": 1}
    for t in trials[2:]:  # each trial's value is its run's optimized metric
        saved = json.loads((second / str(t.number) / "metrics.json").read_text())
        assert t.value == saved["best_epoch_metrics"]["val/acc"]


def test_optuna_records_a_failed_trial_and_goes_on_with_parallel_joblib_trials(tmp_path):
    # a new interpreter (run_cli), as for the joblib launcher above
    r = run_cli("train", "-m", "hparams_search=optuna", *GRID, "optim.lr=choice(-1.0,0.01)", "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", *QUIET, cwd=tmp_path)
    assert r.returncode == 1 and "1 of 2 jobs failed" in r.stderr
    from optuna.trial import TrialState

    trials = _study(tmp_path / "outputs" / "optuna" / "train_synthetic.db").trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL"]
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert failed.params["optim.lr"] == -1.0
    sweep = _sweep(tmp_path)
    assert json.loads((sweep / str(failed.number) / "failed.json").read_text())["type"] == "FerlabError"
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"] == {"optim.lr": 0.01}


def test_slurm_preset_requeues_and_resumes(make_cfg):
    # composition only: submitit refuses to build a SLURM executor where there is no srun
    cfg = make_cfg("hydra/launcher=slurm", "ckpt_path=auto", fast=False)
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1
    assert launcher.max_num_timeout > 0 and launcher.timeout_min > 0 and "partition" in launcher
    folder = OmegaConf.to_container(launcher, resolve=False)["submitit_folder"]
    assert folder.startswith("${hydra.sweep.dir}/")  # next to the jobs' run dirs, which stay put across requeues
    from ferlab.checkpoints.resume import resolve_ckpt_path

    assert resolve_ckpt_path(cfg) is None  # first attempt: nothing to resume; later attempts: <run>/checkpoints/last.ckpt


def test_ctrl_c_stops_the_sweep_lists_what_is_left_and_the_same_sweep_continues(ferlab_cli, tmp_path):
    # a real SIGINT to the sweep's process during job 0's second step (the basic launcher runs jobs in-process);
    # the process starts with Python's own SIGINT handler whatever the suite inherited (nohup, a background job)
    sweep = tmp_path / "sweep"
    ctrl_c = ["+callbacks.sig._target_=tests.test_resume.SignalAtStep", "+callbacks.sig.step=1",
              f"+callbacks.sig.signum={int(signal.SIGINT)}"]
    args = ["train", "-m", "seed=1,2,3", *QUIET, "trainer.limit_val_batches=2", f"hydra.sweep.dir={sweep}"]
    r = ferlab_cli(*args, *ctrl_c, cwd=tmp_path).result(300)
    assert r.returncode == 130, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("ferlab: error:")]
    assert len(errors) == 1 and "sweep stopped: job 0: interrupted at epoch 0, step 1" in errors[0]
    assert "2 jobs not started" in errors[0] and f"hydra.sweep.dir={sweep} ckpt_path=auto" in errors[0]
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]  # jobs 1 and 2 never ran
    assert not (sweep / "1" / "train.log").exists() and not (sweep / "2" / "checkpoints").exists()
    unfinished = (sweep / "report.md").read_text().split("### Unfinished runs")[1]
    assert "(seed=1): interrupted at epoch 0, step 1" in unfinished
    assert "(seed=2): not started" in unfinished and "(seed=3): not started" in unfinished

    r = ferlab_cli(*args, "ckpt_path=auto", cwd=tmp_path).result(300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = _report_json(sweep)
    assert data["failed"] == [] and data["incomplete"] == [] and sorted(data["rows"][0]["seeds"]) == ["1", "2", "3"]
    assert f"resuming from {sweep / '0' / 'checkpoints' / 'last.ckpt'}" in r.stdout  # job 0 went on from step 1
    assert json.loads((sweep / "0" / "metrics.json").read_text())["global_step"] == 2


def test_the_end_of_a_sweep_reads_its_run_folders_once(tmp_path, monkeypatch):
    """The table and the stop line come from one walk of the sweep dir."""
    import contextlib

    import ferlab.search.report
    from ferlab.search.sweep import SweepFailed, SweepSummary, mark_not_started

    for job in ("0", "1"):
        mark_not_started(tmp_path / job, [f"seed={job}"])
    calls, find_runs = [], ferlab.search.report.find_runs
    monkeypatch.setattr(ferlab.search.report, "find_runs", lambda dirs: calls.append(dirs) or find_runs(dirs))
    with contextlib.suppress(SweepFailed):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert calls == [[tmp_path]]


class _Counting:
    """Hydra's config loader, counting the job configs it composes."""

    def __init__(self, loader) -> None:
        self.loader, self.composed = loader, 0

    def load_sweep_config(self, master_config, sweep_overrides):
        self.composed += 1
        return self.loader.load_sweep_config(master_config, sweep_overrides)


def test_a_grid_composes_each_job_once_and_a_bad_job_fails_before_any_runs():
    import pickle

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    from ferlab.config.runner import CONF_DIR
    from hydra_plugins.ferlab_sweepers._composed import ComposedJobs

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        master = compose("train", return_hydra_config=True)
        counting = _Counting(GlobalHydra.instance().config_loader())
        jobs = ComposedJobs(counting)
        batch = [["seed=1", "model.width=8"], ["seed=2", "model.width=8"], ["seed=1", "model.width=8"]]
        jobs.check(master, batch)  # the sweeper's check of the batch
        assert counting.composed == 3
        configs = [jobs.load_sweep_config(master, job) for job in batch]  # the launcher's
        assert counting.composed == 3 and [(c.seed, c.model.width) for c in configs] == [(1, 8), (2, 8), (1, 8)]
        assert len({id(c) for c in configs}) == 3  # each job its own config: the launcher writes into it
        jobs.check(master, batch[:1])
        assert pickle.loads(pickle.dumps(jobs)).kept == {}  # a launcher's worker process composes for itself
        with pytest.raises(MissingConfigException, match="nope"):
            jobs.check(master, [["seed=3"], ["model=nope"]])
    GlobalHydra.instance().clear()
