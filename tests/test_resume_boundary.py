"""A stop signal at every point of a tiny run (2 epochs x 4 steps) resumes to the uninterrupted run, or is refused.

Every case stops a run in this process (a callback signals its own process at a chosen hook), checks where the stop
landed (the next exact resume point: a batch end that stepped the optimizer with no validation next, or an epoch
end), resumes it and compares the history, the final and test metrics and the last and best weights with one
uninterrupted run per trainer setting, computed once per module. The sweep over every training step is a chain: a
run stopped after step 1, resumed and stopped after step 2, ... after step 8, then resumed to the end; each stop's
weights equal the uninterrupted run's at that step, and the end equals it in every number (the stops of resumed runs
are covered too, at half the runs). Also: checkpoints an earlier ferlab saved mid-validation or between
micro-batches are refused in one line, and the guard fails a fit that ends short of its limits.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback

from ferlab.checkpoints.ckpt_file import load_checkpoint
from ferlab.checkpoints.fit_audit import IncompleteFit
from ferlab.checkpoints.preemption import TWICE
from ferlab.config.runner import guarded
from ferlab.errors import FerlabError, Interrupted, Preempted
from ferlab.tasks.train import run_train
from tests.conftest import compose_cfg

# 128 training images in batches of 32: 4 steps per epoch; validation and test: 2 batches of 8 each. Dropout and
# the batched augmentation draw from the RNG at every step, so a resume that is off by one draw shows.
TINY = ["data.source.num_images=160", "data.batch_size=32", "data.eval_batch_size=8", "model.width=4",
        "model.drop_rate=0.2", "augment=report001", "trainer.max_epochs=2", "trainer.num_sanity_val_steps=1",
        "logger=none", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null", "seed=7"]
SETTINGS = {  # trainer settings that move the boundaries; each gets its own uninterrupted reference
    "plain": {},
    # validations after batches 2 and 4 of each epoch; the fit ends at step 6, after batch 2 of epoch 1
    "half": {"trainer.val_check_interval": 0.5, "trainer.max_steps": 6},
    # 3 batches per epoch (the 4th never drawn), steps after batches 2 and 3: 2 optimizer steps per epoch
    "accumulate": {"trainer.limit_train_batches": 3, "trainer.accumulate_grad_batches": 2},
}
TERM, INT, USR1 = int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGUSR1)
LAST, BEST = Path("checkpoints") / "last.ckpt", Path("checkpoints") / "best.ckpt"


class SignalAt(Callback):
    """Sends `signum` to its own process the `nth` time(s) `hook` runs (in the sanity check if `sanity`), or at
    the training batch end that reaches global step `step`."""

    def __init__(self, hook: str, signum: int, nth: int | list[int] = 0, step: int | None = None,
                 sanity: bool = False) -> None:
        self.hook, self.signum, self.step, self.sanity = hook, signum, step, sanity
        self.nth, self.calls = [nth] if isinstance(nth, int) else list(nth), 0

    def _call(self, hook: str, trainer) -> None:
        if hook == self.hook and trainer.sanity_checking == self.sanity:
            self.calls += 1
            if self.calls in self.nth or (self.step is not None and trainer.global_step == self.step):
                os.kill(os.getpid(), self.signum)  # delivered before the next bytecode: inside the hook

    def on_train_batch_end(self, trainer, *args) -> None:
        self._call("on_train_batch_end", trainer)

    def on_validation_batch_end(self, trainer, *args) -> None:
        self._call("on_validation_batch_end", trainer)

    def on_validation_end(self, trainer, *args) -> None:
        self._call("on_validation_end", trainer)

    def on_train_epoch_end(self, trainer, *args) -> None:
        self._call("on_train_epoch_end", trainer)

    def on_save_checkpoint(self, trainer, *args) -> None:
        self._call("on_save_checkpoint", trainer)

    def on_test_batch_end(self, trainer, *args) -> None:
        self._call("on_test_batch_end", trainer)


class WeightTrace(Callback):
    """Keeps the weights after every optimizer step of the run it is in (in `WeightTrace.steps`)."""

    steps: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        WeightTrace.steps[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class OldStop(Callback):
    """Stops as ferlab did before: Lightning's flag raised in the middle of a validation (`hook`
    on_validation_batch_end) or after a micro-batch (on_train_batch_end), last.ckpt saved wherever Lightning then
    stopped."""

    def __init__(self, hook: str, nth: int) -> None:
        self.hook, self.nth, self.calls = hook, nth, 0

    def _call(self, hook: str, trainer) -> None:
        if hook == self.hook and not trainer.sanity_checking:
            self.calls += 1
            if self.calls == self.nth:
                trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(self, trainer, *args) -> None:
        self._call("on_train_batch_end", trainer)

    def on_validation_batch_end(self, trainer, *args) -> None:
        self._call("on_validation_batch_end", trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        trainer.save_checkpoint(Path(trainer.default_root_dir) / LAST)  # ferlab's own save comes after it


class CutShort(Callback):
    """Makes Lightning's fit loop believe max_epochs was reached after epoch 0, without any stop request."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.fit_loop.epoch_progress.current.processed = trainer.max_epochs


class SkipValidation(Callback):
    """Makes Lightning skip epoch 1's validation (as after a restart it believes validated), all steps trained."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 8:
            trainer.fit_loop.epoch_loop._skip_next_val = True


@pytest.fixture(autouse=True)
def sigint_raises():
    """Ctrl-C as a terminal's Python process gets it, whatever this test process inherited (nohup: ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> DictConfig:
    """TINY composed once (Hydra's compose is a third of a run's time); runs differ in plain keys only."""
    root = tmp_path_factory.mktemp("boundary")
    return compose_cfg(root, [*TINY, f"paths.output_dir={root / 'unused'}"])


@pytest.fixture(autouse=True)
def no_report(monkeypatch):
    """The per-class report and confusion matrix after the test stage (matplotlib, ~1 s) are not under test."""
    monkeypatch.setattr("ferlab.analysis.report.report_after_training", lambda *args, **kwargs: None)


def _cfg(base: DictConfig, out: Path, setting: str = "plain", **keys) -> DictConfig:
    cfg = copy.deepcopy(base)
    for key, value in {**SETTINGS[setting], "paths.output_dir": str(out), **keys}.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _signal(hook: str, signum: int, **when) -> dict:
    return {"callbacks.sig": {"_target_": f"{__name__}.SignalAt", "hook": hook, "signum": signum, **when}}


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """reference(setting) -> metrics.json of the uninterrupted run with that setting, its run dir under "dir"."""
    runs: dict[str, dict] = {}

    def get(setting: str) -> dict:
        if setting not in runs:
            out = tmp_path_factory.mktemp(f"ref_{setting}") / "run"
            trace = {"callbacks.trace": {"_target_": f"{__name__}.WeightTrace"}}  # read-only: same run
            runs[setting] = {**run_train(_cfg(base, out, setting, **trace)), "dir": out,
                             "steps": dict(WeightTrace.steps), "last": _weights(out / LAST), "best": _weights(out / BEST)}
            WeightTrace.steps.clear()
        return runs[setting]

    return get


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def _equal(wa: dict[str, torch.Tensor], wb: dict[str, torch.Tensor]) -> bool:
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _stop(cfg: DictConfig, signum: int) -> Preempted:
    with pytest.raises(Preempted) as info:  # Interrupted too
        run_train(cfg)
    assert info.value.code == 128 + signum and info.value.signum == signum
    return info.value


def _resume_matches(ref: dict, base: DictConfig, run: Path, setting: str, tmp_path: Path) -> None:
    """Resume `run` in place: every metric of every epoch, the test metrics and both checkpoints equal `ref`'s."""
    resumed = run_train(_cfg(base, tmp_path / "resumer", setting, ckpt_path=str(run)))
    assert (resumed["global_step"], resumed["epochs"]) == (ref["global_step"], ref["epochs"])
    assert resumed["history"] == ref["history"] and resumed["final"] == ref["final"]
    assert resumed["test"] == ref["test"] and resumed["test"]
    assert _equal(_weights(run / LAST), ref["last"]) and _equal(_weights(run / BEST), ref["best"])
    assert json.loads((run / "metrics.json").read_text())["history"] == ref["history"]


def _where(epoch: int, step: int) -> str:
    return f" at epoch {epoch}, step {step};"


# ---- every training step ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [TERM, INT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_after_every_step_resumes_exactly(base, reference, tmp_path, signum):
    ref, run = reference("plain"), tmp_path / "run"
    for step in range(1, 9):  # fresh at step 1, then each resumed run stopped again one step later
        resume = {"ckpt_path": str(run)} if step > 1 else {}  # a run dir: the run continues in place
        cfg = _cfg(base, run if step == 1 else tmp_path / f"attempt{step}", **resume,
                   **_signal("on_train_batch_end", signum, step=step))
        stop = _stop(cfg, signum)
        # inside an epoch the stop is right after the batch; after an epoch's last batch (steps 4 and 8) it waits
        # for the epoch's validation and end, so the epoch count has moved on
        assert _where(step // 4 if step % 4 == 0 else (step - 1) // 4, step) in str(stop)
        saved = load_checkpoint(run / LAST)
        assert saved["global_step"] == step and _equal(saved["state_dict"], ref["steps"][step])
    assert sorted(ref["steps"]) == list(range(1, 9))
    _resume_matches(ref, base, run, "plain", tmp_path)


# ---- hooks and trainer settings --------------------------------------------------------------------------------

HOOKS = [  # setting, hook, its nth call (sanity check aside), signal, where the stop lands (epoch, step)
    ("plain", "on_validation_batch_end", 1, TERM, (1, 4)),  # epoch 0's validation, first of its two batches
    ("plain", "on_validation_end", 2, INT, (2, 8)),  # epoch 1's validation: the fit's last
    ("plain", "on_train_epoch_end", 1, TERM, (1, 4)),  # before ferlab's epoch-end decision
    ("plain", "on_save_checkpoint", 2, INT, (1, 5)),  # last.ckpt's save at epoch 0's end: after the decision
    ("half", "on_train_batch_end", 2, TERM, (0, 3)),  # a validation follows batch 2: the stop waits for batch 3
    ("half", "on_validation_batch_end", 1, INT, (0, 3)),  # inside that mid-epoch validation
    ("half", "on_save_checkpoint", 1, USR1, (0, 3)),  # best.ckpt's save after it
    ("half", "on_train_batch_end", 6, TERM, (2, 6)),  # max_steps reached: the fit's end
    ("accumulate", "on_train_batch_end", 1, TERM, (0, 1)),  # a micro-batch: waits for the optimizer step
    ("accumulate", "on_train_batch_end", 3, INT, (1, 2)),  # the last of limit_train_batches=3: the epoch end
]


@pytest.mark.parametrize(("setting", "hook", "nth", "signum", "where"), HOOKS,
                         ids=[f"{s}-{h.removeprefix('on_')}{n}-{signal.Signals(g).name}" for s, h, n, g, _ in HOOKS])
def test_a_stop_at_a_hook_waits_for_the_next_exact_point_and_resumes_exactly(base, reference, tmp_path, setting,
                                                                              hook, nth, signum, where):
    run = tmp_path / "run"
    stop = _stop(_cfg(base, run, setting, **_signal(hook, signum, nth=nth)), signum)
    assert _where(*where) in str(stop) and "resume with ckpt_path=" in str(stop)
    _resume_matches(reference(setting), base, run, setting, tmp_path)


def test_a_stop_in_the_sanity_check_waits_for_the_first_step(base, reference, tmp_path):
    run = tmp_path / "run"
    stop = _stop(_cfg(base, run, **_signal("on_validation_batch_end", USR1, nth=1, sanity=True)), USR1)
    assert _where(0, 1) in str(stop)  # SIGUSR1 outside SLURM would have killed the process without a word
    _resume_matches(reference("plain"), base, run, "plain", tmp_path)


def test_a_stop_while_testing_stops_at_once_and_the_resume_tests_again(base, reference, tmp_path):
    run = tmp_path / "run"
    stop = _stop(_cfg(base, run, **_signal("on_test_batch_end", USR1, nth=1)), USR1)
    assert _where(2, 8) in str(stop) and "checkpoint saved" not in str(stop)  # nothing saved: the fit's is exact
    assert not (run / "metrics.json").exists()
    _resume_matches(reference("plain"), base, run, "plain", tmp_path)


WINDOWS = {  # a stop outside Lightning's loops: between the fit and the test, and while the run's files are written
    "after_fit": "ferlab.search.pruning.pruned",
    "writing_files": "ferlab.analysis.report.report_after_training",
}


@pytest.mark.parametrize("window", WINDOWS)
def test_a_stop_between_the_stages_or_while_writing_stops_in_one_line_and_resumes(base, reference, tmp_path,
                                                                               monkeypatch, window):
    import importlib

    module, name = WINDOWS[window].rsplit(".", 1)
    original = getattr(importlib.import_module(module), name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)  # before this: the default action killed the run without a word
        return original(*args, **kwargs)

    monkeypatch.setattr(WINDOWS[window], signalled)
    run = tmp_path / "run"
    stop = _stop(_cfg(base, run), USR1)
    assert _where(2, 8) in str(stop) and "resume with ckpt_path=" in str(stop)
    assert not (run / "metrics.json").exists()  # written last: only a finished run has one
    monkeypatch.setattr(WINDOWS[window], original)
    _resume_matches(reference("plain"), base, run, "plain", tmp_path)


def test_a_second_ctrl_c_during_validation_stops_without_saving_and_the_last_epoch_end_resumes(base, reference,
                                                                                               tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match=re.escape(TWICE)):  # epoch 1's validation: both of its batches
        run_train(_cfg(base, run, **_signal("on_validation_batch_end", INT, nth=[3, 4])))
    assert load_checkpoint(run / LAST)["global_step"] == 4
    _resume_matches(reference("plain"), base, run, "plain", tmp_path)


def test_lightnings_flag_raised_before_a_validation_waits_for_the_epoch_end(base, reference, tmp_path):
    run = tmp_path / "run"  # raised on epoch 0's last batch, as ferlab did before and Lightning's SIGTERM handler does
    flag = {"callbacks.old": {"_target_": f"{__name__}.OldStop", "hook": "on_train_batch_end", "nth": 4}}
    assert _where(1, 4) in str(_stop(_cfg(base, run, **flag), TERM))
    _resume_matches(reference("plain"), base, run, "plain", tmp_path)


# ---- checkpoints an earlier ferlab saved at a boundary, and the guard ------------------------------------------

OLD = [("plain", "on_validation_batch_end", 1, "in the middle of a validation (after 1 of its batches)", 4),
       ("accumulate", "on_train_batch_end", 4, "between the micro-batches of an optimizer step", 2)]


@pytest.mark.parametrize(("setting", "hook", "nth", "problem", "step"), OLD, ids=["mid-validation", "micro-batch"])
def test_a_checkpoint_saved_at_a_boundary_by_an_earlier_ferlab_is_refused_in_one_line(base, tmp_path, setting, hook,
                                                                                      nth, problem, step):
    run = tmp_path / "run"
    old = {"callbacks.old": {"_target_": f"{__name__}.OldStop", "hook": hook, "nth": nth}}
    with pytest.raises(Preempted):
        run_train(_cfg(base, run, setting, **old))
    assert load_checkpoint(run / LAST)["global_step"] == step
    with pytest.raises(FerlabError) as info:
        run_train(_cfg(base, tmp_path / "resumer", setting, ckpt_path=str(run)))
    line = str(info.value)
    assert line.startswith(f"checkpoint {run / LAST} cannot be resumed exactly: it was saved {problem}")
    assert "\n" not in line and line.endswith("start the run again without ckpt_path=")
    assert not (run / "metrics.json").exists()


SHORT = [("CutShort", "epoch 2, step 4 (1 validation run)"), ("SkipValidation", "epoch 2, step 8 (1 validation run)")]


@pytest.mark.parametrize(("callback", "ended"), SHORT, ids=["steps", "validations"])
def test_a_fit_that_ends_short_of_its_limits_fails_in_one_line_without_metrics(base, tmp_path, capsys, callback,
                                                                                ended):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        guarded(run_train, _cfg(base, run, **{"callbacks.cut": {"_target_": f"{__name__}.{callback}"}}))
    assert info.value.code == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ferlab: error:")]
    assert lines == [f"ferlab: error: training ended at {ended}, but max_epochs=2 at 4 optimizer steps per epoch "
                     "means epoch 2, step 8 (2 validation runs); no early stopping, pruning, max_time or stop "
                     "request explains it; metrics.json not written"]
    assert not (run / "metrics.json").exists()
    assert json.loads((run / "failed.json").read_text())["type"] == IncompleteFit.__name__
