"""Experiment trackers against the real thing: a real `mlflow server` (SQLite, 127.0.0.1) read back through
MlflowClient, W&B offline runs read back with W&B's own reader (`wandb leet inspect`), a run stopped by Ctrl-C and
resumed into the same tracker runs, a server that is down, a missing package and an unknown logger name."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from optuna.pruners import BasePruner

from ferlab.errors import Interrupted
from ferlab.tasks.train import run_train
from tests.conftest import forkserver, output_to

# two epochs of two training batches and one validation batch each
TINY = ["data.source.num_images=200", "data.batch_size=16", "model.width=8", "trainer.max_epochs=2",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
# Optuna's grid over the two optimizers, in place of the preset's TPE space (as tests/test_sweeps.py)
GRID = ["~hydra.sweeper.sampler.seed", "~hydra.sweeper.sampler.n_startup_trials",
        "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler", "+hydra.sweeper.sampler._partial_=true",
        "~hydra.sweeper.params", "optim=choice(adam,sgd)", "hydra.sweeper.n_trials=2"]
COMPLETE_FILES = {"metrics.json", "eval/report.json", "eval/report.md", "eval/confusion_matrix.png",
                  "hydra/config.yaml", "hydra/overrides.yaml"}


class PruneTrialOne(BasePruner):
    """Prunes trial 1 at its first report, so a two-trial search has one complete and one pruned trial."""

    def prune(self, study, trial) -> bool:
        return trial.number == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def booting_server(tmp_path_factory):
    """A real `mlflow server` for the module (SQLite backend, artifacts served from a folder, one worker), started
    with the module's first test (the forkserver too) so that their start-up overlaps the tests that need neither."""
    forkserver()
    root, port = tmp_path_factory.mktemp("mlflow_server"), _free_port()
    log = (root / "server.log").open("w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc, f"http://127.0.0.1:{port}", root / "server.log"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(booting_server) -> str:
    """The server's URL once it answers /health."""
    proc, url, log = booting_server
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return url
        except OSError:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch) -> dict[str, str]:
    """W&B's own folders under tmp_path (never HOME), no console capture, nothing sent anywhere."""
    env = {"WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb_data"), "WANDB_CONSOLE": "off", "WANDB_SILENT": "true",
           "WANDB_ERROR_REPORTING": "false", "WANDB_MODE": "offline",
           "WANDB__DISABLE_STATS": "true", "WANDB__DISABLE_META": "true"}  # no system monitor, no machine probe
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _ferlab_child(argv: list[str], root: str, log: str, env: dict[str, str]) -> None:
    """`ferlab <argv>` in a process of its own, in `root`, its output in `log`."""
    import torch

    torch.set_num_threads(1)
    output_to(log, append=True)
    os.environ.update(env, FERLAB_ROOT=root)
    os.environ.pop("FERLAB_RUN_ID", None)
    os.chdir(root)
    from ferlab.cli import main

    main(list(argv))


def _ferlab_process(*argv: str, root: Path, log: Path, env: dict[str, str]) -> mp.Process:
    """A started process running `ferlab <argv>`, forked from the forkserver."""
    proc = forkserver().Process(target=_ferlab_child, args=(list(argv), str(root), str(log), env))
    proc.start()
    return proc


def _expected_config(run: Path, tb_name: str | None = None) -> dict:
    """A job's `.hydra/config.yaml` resolved as the job resolved it (its run dir, its TensorBoard run name)."""
    import ferlab.config.runner  # noqa: F401  (ferlab's resolvers)

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.paths.output_dir = str(run)
    if tb_name is not None:
        cfg.logger.tensorboard.version = tb_name
    return OmegaConf.to_container(cfg, resolve=True)


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys; strings bare, everything else as JSON."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def _wandb_records(path: Path, capfd: pytest.CaptureFixture) -> list[dict]:
    """The records of a .wandb transaction log, as W&B's own reader (`wandb leet inspect --json`) prints them: the
    command's function, called here (it runs the wandb-core reader and exits with its status), saves the ~1 s of a
    new interpreter importing wandb's CLI."""
    from wandb.cli.leet import launch_inspect

    capfd.readouterr()
    with pytest.raises(SystemExit) as done:
        launch_inspect(str(path), json_output=True)
    out, err = capfd.readouterr()
    assert done.value.code == 0, err[-2000:]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _wandb_run(records: list[dict]) -> dict:
    """One offline run's run record, merged config, history rows and exit code."""
    config: dict = {}
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update", {}))
    config.pop("_wandb", None)
    runs = [r["run"] for r in records if r["type"] == "run"]  # the start, then updates (tags)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    exits = [r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"]
    return {"run": runs[0], "tags": runs[-1].get("tags", []), "config": config, "history": history,
            "exit": exits[-1] if exits else None}


def _epochs(history: list[dict], key: str) -> dict[int, float]:
    """{epoch: value} of a per-epoch metric in W&B history rows."""
    return {int(row["epoch"]): row[key] for row in history if key in row}


def _same(logged: float, saved: float, key: str) -> bool:
    """A logged metric equals metrics.json's value; `lr-*` reaches the loggers as the optimizer's float and
    metrics.json through Lightning's float32 callback metrics, so those agree in float32."""
    import numpy as np

    return np.float32(logged) == np.float32(saved) if key.startswith("lr-") else logged == saved


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_tracking_server_that_is_down_costs_one_warning_and_the_run_logs_locally(make_cfg, caplog):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there: the connection is refused
    cfg = make_cfg(*TINY, "trainer.max_epochs=1", "logger=mlflow", f"logger.mlflow.tracking_uri={url}", "test=false",
                   fast=False)
    with caplog.at_level("WARNING"):
        metrics = run_train(cfg)
    run = Path(cfg.paths.output_dir)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("ferlab")]
    assert len(warnings) == 1 and url in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    assert metrics["epochs"] == 1 and (run / "metrics.json").is_file() and not (run / "trackers.json").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))  # the curves, locally


def test_a_tracker_lost_during_the_run_costs_one_warning_not_the_run(make_cfg, caplog, monkeypatch):
    from pytorch_lightning.loggers import MLFlowLogger

    def refused(self, metrics, step=None):  # what MLflow raises once its retries against a dead server are spent
        raise ConnectionRefusedError(111, "Connection refused")

    cfg = make_cfg(*TINY, "trainer.max_epochs=1", "logger=mlflow", "test=false", fast=False)  # the local store
    monkeypatch.setattr(MLFlowLogger, "log_metrics", refused)
    with caplog.at_level("WARNING"):
        metrics = run_train(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("ferlab")]
    store = json.loads((Path(cfg.paths.output_dir) / "trackers.json").read_text())["mlflow"]["tracking_uri"]
    assert len(warnings) == 1 and store in warnings[0] and "Connection refused" in warnings[0]
    assert metrics["epochs"] == 1 and (Path(cfg.paths.output_dir) / "metrics.json").is_file()


def test_a_crash_marks_the_mlflow_run_failed(make_cfg, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(*TINY, "logger=mlflow", "test=false", "+callbacks.crash._target_=tests.test_resume.FailAtEpochStart",
                   "+callbacks.crash.epoch=1", fast=False)  # the local store
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(cfg)
    stored = json.loads((Path(cfg.paths.output_dir) / "trackers.json").read_text())["mlflow"]
    run = MlflowClient(stored["tracking_uri"]).get_run(stored["run_id"])
    assert run.info.status == "FAILED" and run.data.metrics["epoch"] == 0  # the first epoch was logged
    # this run's own store, and none left in the environment for the next run of the process to take as its own
    assert stored["tracking_uri"] == f"sqlite:///{Path(cfg.paths.log_dir).resolve()}/mlflow.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_is_one_line_naming_the_extra(make_cfg, monkeypatch, capsys, package):
    from ferlab.config.runner import guarded

    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    cfg = make_cfg(f"logger={package}")
    with pytest.raises(SystemExit) as info:
        guarded(run_train, cfg)
    assert info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"ferlab: error: logger.{package} needs the {package} package, which is not installed: "
        f"pip install 'ferlab[{package}]'"]


def test_an_unknown_logger_is_one_line_listing_the_loggers(tmp_path, capsys, monkeypatch):
    from ferlab.cli import main
    from ferlab.trackers import unknown_logger

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["train", "logger=nope"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "ferlab: error: logger=nope: no such logger; available: csv, many, mlflow, none, tensorboard, wandb"]
    (tmp_path / "mine" / "logger").mkdir(parents=True)
    (tmp_path / "mine" / "logger" / "lab.yaml").write_text("{}\n")  # a user's own option counts
    assert unknown_logger(["--config-dir", str(tmp_path / "mine"), "logger=lab"]) is None
    assert unknown_logger(["-m", "--config-dir", str(tmp_path / "mine"), "logger=lab,[mlflow,nope]"]).startswith(
        "logger=nope: no such logger; available: csv, lab, many")


# ---- against the server (its start-up overlapped the tests above) ------------------------------------------------

def test_an_optuna_search_logs_each_trial_to_mlflow_and_wandb_named_as_in_tensorboard(tmp_path, server, wandb_env,
                                                                                       monkeypatch, capfd):
    """`logger=[many,wandb]`: TensorBoard + CSV + MLflow (a real server) + W&B offline, two trials (one pruned)."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from ferlab.search.study import load_study
    from tests.test_sweeps import _tensorboard_runs

    log = tmp_path / "sweep.log"
    proc = _ferlab_process("train", "-m", "hparams_search=optuna", *GRID, *TINY, "task_name=tracked",
                           "hydra.sweeper.pruner={_target_:tests.test_trackers.PruneTrialOne}", "logger=[many,wandb]",
                           f"logger.mlflow.tracking_uri={server}", root=tmp_path, log=log, env=wandb_env)
    proc.join(300)
    assert proc.exitcode == 0 and "Traceback" not in log.read_text(), log.read_text()[-3000:]
    monkeypatch.setenv("FERLAB_ROOT", str(tmp_path))  # as the jobs resolved ${paths.root_dir}
    (sweep,) = (tmp_path / "outputs" / "tracked" / "multiruns").iterdir()
    study = load_study(f"sqlite:///{tmp_path}/outputs/optuna/tracked_synthetic.db", "tracked_synthetic")
    states = {t.number: t.state for t in study.trials}
    assert sorted(states.values(), key=str) == sorted([TrialState.COMPLETE, TrialState.PRUNED], key=str)
    names = {Path(p).parts[0]: Path(p).parts[2] for p in _tensorboard_runs(sweep)}  # job -> TensorBoard run name
    assert sorted(names.values()) == ["optim=adam", "optim=sgd"]

    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(runs) == 2
    for run in runs:
        job = Path(run.data.tags["ferlab.run_dir"])
        metrics = json.loads((job / "metrics.json").read_text())
        state = "pruned" if states[int(job.name)] == TrialState.PRUNED else "complete"
        assert job.parent == sweep and run.info.run_name == names[job.name] and run.info.status == "FINISHED"
        assert run.data.tags["ferlab.sweep"] == str(sweep) and run.data.tags["ferlab.job"] == job.name
        assert run.data.tags["ferlab.version"] == metrics["ferlab"]["version"]
        assert run.data.tags.get("ferlab.commit", "").startswith(metrics["ferlab"]["commit"] or "")
        assert run.data.tags["optuna.trial"] == job.name and run.data.tags["optuna.state"] == state
        assert run.data.params == _flat(_expected_config(job, names[job.name]))
        last = {**metrics["final"], **metrics["test"]}
        assert len(last) >= 6 and all(_same(run.data.metrics[k], v, k) for k, v in last.items())
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert history == [row["val/acc"] for row in metrics["history"]]  # per epoch, under ferlab's names
        files = {a.path for folder in (None, "eval", "hydra") for a in client.list_artifacts(run.info.run_id, folder)
                 if not a.is_dir}
        assert files == (COMPLETE_FILES if state == "complete" else {f for f in COMPLETE_FILES if "eval" not in f})
        copy = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
        assert Path(copy).read_bytes() == (job / "metrics.json").read_bytes()
        stored = json.loads((job / "trackers.json").read_text())
        assert stored["mlflow"]["run_id"] == run.info.run_id and stored["mlflow"]["tracking_uri"] == server

        (log,) = _offline_runs(job)  # W&B, offline: the same names, config, metrics and the sweep as the group
        wb = _wandb_run(_wandb_records(log, capfd))
        assert wb["run"]["display_name"] == names[job.name] and wb["run"]["run_group"] == sweep.name
        assert wb["run"]["run_id"] == stored["wandb"]["id"] and wb["exit"] == 0
        assert wb["config"] == _expected_config(job, names[job.name])
        assert _epochs(wb["history"], "val/acc") == {row["epoch"]: row["val/acc"] for row in metrics["history"]}
        tested = {k: v for row in wb["history"] for k, v in row.items() if k.startswith("test/")}
        assert tested == metrics["test"]
        assert {"dev", f"optuna.trial={job.name}", f"optuna.state={state}"} <= set(wb["tags"])
        kept = {p.relative_to(log.parent / "files").as_posix() for p in (log.parent / "files").rglob("*") if p.is_file()}
        assert kept >= (COMPLETE_FILES if state == "complete" else {f for f in COMPLETE_FILES if "eval" not in f})
        assert (log.parent / "files" / "metrics.json").read_bytes() == (job / "metrics.json").read_bytes()


def test_a_run_stopped_by_ctrl_c_is_killed_in_the_trackers_and_its_resume_continues_the_same_runs(
        make_cfg, tmp_path, server, wandb_env, capfd):
    from mlflow import MlflowClient

    run = tmp_path / "stopped"
    common = ["logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={server}", "task_name=resumed", *TINY,
              "test=false", "tags=[" + "x" * 7000 + "]"]  # a parameter over MLflow's 6000 characters
    stop = ["+callbacks.sig._target_=tests.test_resume.SignalAtStep", "+callbacks.sig.step=3",
            f"+callbacks.sig.signum={int(signal.SIGINT)}"]  # in the second epoch
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C finds a process
    try:
        with pytest.raises(Interrupted):
            run_train(make_cfg(*common, *stop, f"paths.output_dir={run}", fast=False))
    finally:
        signal.signal(signal.SIGINT, before)
    stored = json.loads((run / "trackers.json").read_text())
    client = MlflowClient(server)
    assert client.get_run(stored["mlflow"]["run_id"]).info.status == "KILLED"
    (first,) = _offline_runs(run)
    stopped = _wandb_run(_wandb_records(first, capfd))
    assert stopped["exit"] == 128 + signal.SIGINT  # W&B: failed, with the stop's status

    metrics = run_train(make_cfg(*common, f"ckpt_path={run}", "logger.mlflow.log_model=true",
                                 f"paths.output_dir={tmp_path / 'resumer'}", fast=False))
    assert json.loads((run / "trackers.json").read_text()) == stored  # the same runs, continued
    (only,) = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert only.info.run_id == stored["mlflow"]["run_id"] and only.info.status == "FINISHED"
    history = client.get_metric_history(only.info.run_id, "val/acc")
    assert [m.value for m in history] == [row["val/acc"] for row in metrics["history"]] and len(history) == 2
    assert only.data.params["ckpt_path"] == "null" and only.data.tags["resumed.ckpt_path"] == str(run)
    assert len(only.data.params["tags"]) == 6000 and only.data.params["tags"].endswith("...")
    assert [a.path for a in client.list_artifacts(only.info.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]

    (second,) = [p for p in _offline_runs(run) if p != first]  # offline: one folder per attempt
    logs = [stopped, _wandb_run(_wandb_records(second, capfd))]
    assert {w["run"]["run_id"] for w in logs} == {stored["wandb"]["id"]}
    assert sorted(w["exit"] for w in logs) == [0, 128 + signal.SIGINT]
    epochs = {**_epochs(logs[0]["history"], "val/acc"), **_epochs(logs[1]["history"], "val/acc")}
    assert epochs == {row["epoch"]: row["val/acc"] for row in metrics["history"]}


def test_tensorboard_on_a_full_disk_costs_one_warning_not_the_run(tmp_path, monkeypatch, caplog):
    """conf/logger/tensorboard.yaml's logger: a write failing with ENOSPC stops the events with one warning line."""
    import errno

    from hydra.utils import instantiate

    from ferlab.config.runner import CONF_DIR

    node = OmegaConf.load(Path(CONF_DIR) / "logger" / "tensorboard.yaml").tensorboard
    board = instantiate(node, save_dir=str(tmp_path), version="")
    board.log_metrics({"train/loss": 1.0}, step=0)
    writes = []

    def full(*args, **kwargs):
        writes.append(args)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(board.experiment, "add_scalar", full)
    board.log_metrics({"train/loss": 0.5}, step=1)
    board.log_metrics({"train/loss": 0.4}, step=2)  # dropped: the disk was full
    board.log_hyperparams({"lr": 0.1}, metrics={"hp/val/acc": 0.5})
    board.finalize("success")
    assert len(writes) == 1
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(tmp_path) in lines[0]
