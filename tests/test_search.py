"""ferlab's Optuna search as a cluster runs it: worker processes sharing one study in SQLite, a journal file and a
real PostgreSQL server, with the README's search-space grammar; a killed worker's trial failed by heartbeat and retried; pruning; the README's grammar;
studies of the old Optuna 2 version; one-line errors for bad storages, directions and pruners."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tests.conftest import ForkedCli, run_cli

DATA = Path(__file__).resolve().parent / "data"
# a smoke-sized trial (200 images, a narrow net, two training and one validation batch), no logger, no test run
TRIAL = ["debug=smoke", "data.source.num_images=200", "model.width=8", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "logger=none", "test=false"]
# the search-space examples of the README (Hydra's Optuna sweeper grammar): they replace or fix the preset's space
README_GRAMMAR = ["optim.lr=tag(log, interval(1e-5, 1e-2))", "model.drop_rate=interval(0, 0.3)",
                  "optim=choice(adam, adamw)", "data.batch_size=64"]


def _finish(proc: ForkedCli, timeout: float = 400) -> str:
    r = proc.result(timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.stderr


def _study(url: str, name: str = "smoke_synthetic") -> optuna.Study:
    from ferlab.search.study import load_study

    return load_study(url, name)


def _worker(ferlab_cli, root: Path, run_id: str, *overrides: str) -> ForkedCli:
    """One `ferlab train -m hparams_search=optuna ...` process (its own session) with its own sweep dir (run id)."""
    return ferlab_cli("train", "-m", "hparams_search=optuna", *TRIAL, *overrides, cwd=root,
                      env={"FERLAB_RUN_ID": run_id})


def _two_workers(ferlab_cli, root: Path, url: str, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """Start two workers together on one study with the README's search-space grammar; both must exit 0 without
    a traceback. The study's trials afterwards."""
    from hydra_plugins.ferlab_sweepers._optuna import _quoted

    args = [f"hydra.sweeper.storage={_quoted(url)}", f"hydra.sweeper.n_trials={n_trials}", *README_GRAMMAR]
    workers = [_worker(ferlab_cli, root, f"w{i}", *args) for i in range(2)]
    for proc in workers:
        _finish(proc)
    return _study(url).trials


def _check_trials_match_their_runs(trials: list[optuna.trial.FrozenTrial]) -> None:
    """No configuration twice, the README's grammar as Hydra's Optuna sweeper read it, and each trial's value and
    parameters those of the run that one of the two workers made for it."""
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)  # same seed, different trial numbers: no configuration twice
    dists = trials[0].distributions
    assert dists["optim.lr"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert dists["model.drop_rate"] == FloatDistribution(0.0, 0.3)
    assert dists["optim"] == CategoricalDistribution(["adam", "adamw"])
    assert "data.batch_size" not in dists and trials[0].user_attrs["data.batch_size"] == "64"
    for t in trials:  # each trial's value is its run's metric, in the sweep dir of the worker that ran it
        run = Path(t.user_attrs["ferlab_run"]["dir"])
        assert run.parent.name.endswith(("_w0", "_w1"))
        assert t.value == json.loads((run / "metrics.json").read_text())["best_epoch_metrics"]["val/acc"]
        cfg = (run / ".hydra" / "config.yaml").read_text()  # what the trial suggested is what its run used
        assert f"lr: {t.params['optim.lr']}" in cfg and "batch_size: 64" in cfg


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study(ferlab_cli, tmp_path, kind):
    url = {"sqlite": f"sqlite:///{tmp_path}/study.db", "journal": f"journal:///{tmp_path}/study.log"}[kind]
    trials = _two_workers(ferlab_cli, tmp_path, url, n_trials=4)
    states = [t.state for t in trials]
    assert set(states) == {TrialState.COMPLETE} and len(states) in (4, 5), states  # + at most one per extra worker
    _check_trials_match_their_runs(trials)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server for the module (pgserver's bundled binaries), as a SQLAlchemy URL."""
    try:
        import pgserver
    except ImportError:
        pytest.skip("pgserver (ferlab[dev], Python < 3.13) is not installed: no PostgreSQL server to start")
    # not under pytest's private (0700) temp dir: as root, pgserver runs the server as its own system user
    data = Path(tempfile.mkdtemp(prefix="ferlab-pg-"))
    data.chmod(0o755)
    try:
        server = pgserver.get_server(data / "data", cleanup_mode="stop")
    except Exception as e:  # e.g. a machine where the server cannot bind its socket
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {e}")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_study_in_postgresql(ferlab_cli, tmp_path, postgres):
    trials = _two_workers(ferlab_cli, tmp_path, postgres, n_trials=4)
    states = [t.state for t in trials]
    assert set(states) == {TrialState.COMPLETE} and len(states) in (4, 5), states  # + at most one per extra worker
    _check_trials_match_their_runs(trials)


def test_a_killed_workers_trial_is_failed_by_heartbeat_and_retried_by_the_other(ferlab_cli, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    args = [f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=4", "hydra.sweeper.heartbeat_interval=1"]
    victim = _worker(ferlab_cli, tmp_path, "victim", *args)
    runs = tmp_path / "outputs" / "smoke" / "multiruns"
    deadline = time.time() + 300
    while not list(runs.glob("*_victim/*/.hydra")) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # the node is lost in the middle of a trial
    victim.wait()
    (killed_dir,) = [p.parent for p in runs.glob("*_victim/*/.hydra")]
    # the other worker comes once the grace period (2 heartbeat intervals) is over: had it started with the victim,
    # its 4 trials could all end before the victim's trial went stale, leaving the retry queued for a later worker
    time.sleep(2.5)
    _finish(_worker(ferlab_cli, tmp_path, "survivor", *args))
    trials = _study(url).trials
    (killed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert killed.number == int(killed_dir.name) and not (killed_dir / "metrics.json").exists()
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert "_survivor" in retry.user_attrs["ferlab_run"]["dir"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) in (4, 5)


def test_the_pruner_stops_a_hopeless_trial_early(ferlab_cli, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    # median pruning from the first finished trial; two epochs each; learning rate fixed per command
    args = [f"hydra.sweeper.storage={url}", "trainer.max_epochs=2", "optimized_metric=val/loss",
            "hydra.sweeper.direction=minimize",
            "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1}"]
    good = ferlab_cli("train", "-m", "hparams_search=optuna", *TRIAL, *args, "hydra.sweeper.n_trials=1",
                      "optim.lr=0.001", cwd=tmp_path).result(300)
    assert good.returncode == 0, good.stderr[-3000:]
    bad = ferlab_cli("train", "-m", "hparams_search=optuna", *TRIAL, *args, "hydra.sweeper.n_trials=2",
                     "optim.lr=0.5", cwd=tmp_path).result(300)
    assert bad.returncode == 0 and "Traceback" not in bad.stderr, bad.stderr[-3000:]  # pruned is not failed
    first, second = _study(url).trials
    assert first.state == TrialState.COMPLETE and second.state == TrialState.PRUNED
    assert sorted(first.intermediate_values) == [0, 1] and sorted(second.intermediate_values) == [0]
    run = Path(second.user_attrs["ferlab_run"]["dir"])
    metrics = json.loads((run / "metrics.json").read_text())  # the run dir says so
    assert metrics["pruned"]["epoch"] == 0 and metrics["epochs"] == 1 and not (run / "failed.json").exists()
    assert "### Pruned runs" in (run.parent / "report.md").read_text()
    table = run_cli("report", "--study", url, "smoke_synthetic", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| 0 | complete |") and lines[2].startswith("| 1 | pruned |")


def test_search_space_grammar_is_hydras():
    from hydra_plugins.ferlab_sweepers._space import grid_choices, parse_space

    space, fixed = parse_space(["optim.lr=tag(log, interval(1e-4, 1e-1))", "model.width=int(interval(4, 16))",
                                "data.batch_size=choice(32, 64)", "optim=adam,sgd", "model.depth=range(8, 33, 8)",
                                "model.drop_rate=range(0.0, 0.3, 0.1)", "seed=1", "data.batch_size=16"])
    assert space == {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True), "model.width": IntDistribution(4, 16),
                     "optim": CategoricalDistribution(["adam", "sgd"]), "model.depth": IntDistribution(8, 32, step=8),
                     "model.drop_rate": FloatDistribution(0.0, 0.2, step=0.1)}
    assert sorted(fixed) == ["data.batch_size", "seed"]  # the last entry for a key wins: 16 takes it out
    assert grid_choices("model.depth", space["model.depth"]) == [8, 16, 24, 32]  # Hydra's range: stop excluded


def test_storage_urls_reach_jobs_absolute_and_intact(tmp_path, monkeypatch):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ferlab.search.study import absolute_url
    from hydra_plugins.ferlab_sweepers._optuna import _quoted

    for url in ["journal:////shared/a b/x.log", "postgresql+psycopg://u:p'w\\d@h:5/db?host=/tmp/s", "x\\"]:
        (override,) = OverridesParser.create().parse_overrides([f"hydra.sweeper.storage={_quoted(url)}"])
        assert override.value() == url
    monkeypatch.chdir(tmp_path)  # jobs on other nodes may start elsewhere: file storages get absolute paths
    assert absolute_url("sqlite:///./o/x.db?timeout=3") == f"sqlite:///{tmp_path}/o/x.db?timeout=3"
    assert absolute_url("journal:///j.log") == f"journal:///{tmp_path}/j.log"
    assert absolute_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_journal_heartbeats_fail_a_silent_trial_and_queue_its_retry(tmp_path):
    from ferlab.search.study import open_storage

    storage = open_storage(f"journal:///{tmp_path}/study.log", heartbeat_interval=1, grace_period=1, max_retry=1)
    study = optuna.create_study(study_name="s", storage=storage)
    silent, alive = study.ask(), study.ask()
    silent.suggest_float("x", 0, 1)
    storage.record_heartbeat(silent._trial_id)
    time.sleep(1.5)
    storage.record_heartbeat(alive._trial_id)  # its worker is alive: the check leaves it alone
    optuna.storages.fail_stale_trials(study)
    first, second, retry = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL and second.state == TrialState.RUNNING
    assert retry.state == TrialState.WAITING and retry.params == first.params
    assert retry.system_attrs["failed_trial"] == first.number



def test_a_trial_has_a_heartbeat_from_the_moment_it_is_asked(tmp_path):
    """A worker killed between asking for a trial and launching it leaves a trial the grace period fails (a trial
    that never had a heartbeat would stay RUNNING for ever)."""
    from ferlab.search.study import open_storage
    from hydra_plugins.ferlab_sweepers._optuna import _Search

    storage = open_storage(f"sqlite:///{tmp_path}/study.db", heartbeat_interval=1, grace_period=1, max_retry=0)
    search = object.__new__(_Search)  # only what _ask uses: the study, its storage and the seeded samplers
    search.storage, search.study = storage, optuna.create_study(study_name="s", storage=storage)
    search.sampler_for = lambda number: optuna.samplers.RandomSampler(seed=number)
    trial = search._ask()  # ... and the worker dies here, before the launcher's heartbeat thread starts
    time.sleep(2.2)  # SQLite's clock has whole seconds: 2 s past a beat is surely more than the grace period
    optuna.storages.fail_stale_trials(search.study)
    assert search.study.get_trials(deepcopy=False)[trial.number].state == TrialState.FAIL

def test_a_trial_left_running_without_heartbeats_is_failed_and_retried(tmp_path):
    """An Optuna-2 worker (hydra-optuna-sweeper) keeps no heartbeats: its trial left RUNNING is failed once its
    start is older than the grace period, and queued again with its parameters; a trial just asked is left alone."""
    from ferlab.search.study import open_storage

    url = f"sqlite:///{tmp_path}/study.db"
    old = optuna.create_study(study_name="s", storage=url)  # Optuna's own storage: no heartbeats
    old.ask().suggest_float("x", 0, 1)
    with sqlite3.connect(tmp_path / "study.db") as con:
        con.execute("UPDATE trials SET datetime_start = '2021-06-01 12:00:00.000000' WHERE number = 0")
    old.ask()  # just asked: within the grace period
    study = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat_interval=1, grace_period=5,
                                                                   max_retry=1))
    optuna.storages.fail_stale_trials(study)
    left, fresh, retry = study.get_trials(deepcopy=False)
    assert left.state == TrialState.FAIL and fresh.state == TrialState.RUNNING
    assert retry.state == TrialState.WAITING and retry.params == left.params and retry.system_attrs["failed_trial"] == 0


def test_a_trial_this_worker_asked_and_has_not_started_yet_is_not_failed(tmp_path):
    """A batch of trials is asked at once and launched in turn: one waiting for its turn has no heartbeat yet and
    may be older than the grace period. Its own worker leaves it alone; another worker fails it."""
    from ferlab.search.study import open_storage

    url = f"sqlite:///{tmp_path}/study.db"
    mine = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat_interval=1, grace_period=2,
                                                                    max_retry=0))
    mine.ask().suggest_float("x", 0, 1)
    with sqlite3.connect(tmp_path / "study.db") as con:
        con.execute("UPDATE trials SET datetime_start = '2021-06-01 12:00:00.000000' WHERE number = 0")
    optuna.storages.fail_stale_trials(mine)
    assert [t.state for t in mine.get_trials(deepcopy=False)] == [TrialState.RUNNING]
    other = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat_interval=1, grace_period=2,
                                                                   max_retry=0))
    optuna.storages.fail_stale_trials(other)
    assert [t.state for t in other.get_trials(deepcopy=False)] == [TrialState.FAIL]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_study_of_the_old_optuna_2_version_is_upgraded_then_continued(ferlab_cli, tmp_path):
    db = tmp_path / "old.db"  # made by ferlab with hydra-optuna-sweeper and Optuna 2.10: 2 complete, 1 left running
    with sqlite3.connect(db) as con:
        con.executescript((DATA / "optuna210_study.sql").read_text())
    url, before = f"sqlite:///{db}", _sha(db)
    args = ["train", "-m", "hparams_search=optuna", *TRIAL, f"hydra.sweeper.storage={url}",
            "hydra.sweeper.study_name=train_synthetic", "hydra.sweeper.n_trials=3"]
    r = ferlab_cli(*args, cwd=tmp_path).result(300)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "written by Optuna 2" in r.stderr and f"optuna storage upgrade --storage '{url}'" in r.stderr
    assert _sha(db) == before  # not touched
    optuna_cli = Path(sys.executable).with_name("optuna")
    up = subprocess.run([str(optuna_cli), "storage", "upgrade", "--storage", url], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    r = ferlab_cli(*args, cwd=tmp_path).result(300)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = _study(url, "train_synthetic").trials
    # the trial the Optuna 2 worker left running is failed and re-run with its parameters, not left RUNNING
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert trials[3].system_attrs["failed_trial"] == 2 and trials[2].params.items() <= trials[3].params.items()
    assert trials[0].params["optim.lr"] == pytest.approx(0.06149619971126094)  # the old trials, as they were
    assert trials[0].distributions["optim.lr"] == FloatDistribution(1e-4, 1e-1, log=True)


@pytest.mark.parametrize("override, message", [
    ("hydra.sweeper.storage=postgresql+psycopg://nobody@127.0.0.1:1/none", "cannot open the study storage"),
    ("hydra.sweeper.storage=nosuchdb://x", "cannot open the study storage nosuchdb://x"),
    ("hydra.sweeper.pruner=bogus", "hydra.sweeper.pruner='bogus': unknown pruner; choose from none, median"),
    ("hydra.sweeper.direction=minimize", "was created to maximize, this search would minimize"),
])
def test_bad_search_input_is_one_line_and_leaves_the_study_alone(ferlab_cli, tmp_path, override, message):
    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="smoke_synthetic", storage=f"sqlite:///{db}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)}))
    before = _sha(db)
    r = ferlab_cli("train", "-m", "hparams_search=optuna", *TRIAL, f"hydra.sweeper.storage=sqlite:///{db}", override,
                   cwd=tmp_path).result(300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("ferlab: error: ") and message in line
    assert _sha(db) == before and len(_study(f"sqlite:///{db}").trials) == 1


def test_a_trial_builds_its_sampler_once(tmp_path):
    """Seeded for the number it will get, once; rebuilt only when another worker took that number meanwhile."""
    from ferlab.search.study import open_storage
    from hydra_plugins.ferlab_sweepers._optuna import _Search

    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    search = object.__new__(_Search)  # only what _ask uses: the study, its storage and the seeded samplers
    search.storage, search.study = storage, optuna.create_study(study_name="s", storage=storage)
    built = []
    search.sampler_for = lambda number: built.append(number) or optuna.samplers.RandomSampler(seed=number)
    assert [search._ask().number for _ in range(3)] == [0, 1, 2]
    assert built == [0, 1, 2]


def test_the_retry_of_a_stopped_trial_continues_its_run(tmp_path):
    """Ctrl-C fails a worker's running trial and queues its retry; the retry (Optuna's next number, linked by
    `failed_trial`) continues the stopped run in its dir from its last.ckpt instead of starting again."""
    from types import SimpleNamespace

    from ferlab.search.study import open_storage
    from ferlab.search.trial import RUN_ATTR
    from hydra_plugins.ferlab_sweepers._optuna import _abandon, _Search

    storage = open_storage(f"sqlite:///{tmp_path}/study.db", heartbeat_interval=30, max_retry=1)
    search = object.__new__(_Search)  # what _ask and _configure use
    search.storage, search.study = storage, optuna.create_study(study_name="s", storage=storage)
    search.sampler_for = lambda number: optuna.samplers.RandomSampler(seed=number)
    search.space, search.fixed, search.extend, search.job_overrides = {"x": FloatDistribution(0, 1)}, {}, None, []
    search.sweeper = SimpleNamespace(config=None, _job_dir=lambda overrides, idx: tmp_path / "sweep" / str(idx))
    first = search._ask()
    assert not any(o.startswith("ckpt_path=") for o in search._configure(first))
    run = tmp_path / "sweep" / "0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"saved at Ctrl-C")
    _abandon(search.study, [first], max_retry=1, retry=True)
    retry = search._ask()
    overrides = search._configure(retry)
    assert storage.get_trial_system_attrs(retry._trial_id)["failed_trial"] == 0 and retry.params == first.params
    assert f"ckpt_path='{run}'" in overrides and retry.user_attrs[RUN_ATTR]["dir"] == str(run)
