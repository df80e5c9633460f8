"""The bridge from `ferlab <task>` to Hydra: config location, resolvers, and the task wrapper.

Light on purpose: nothing here imports torch or lightning, so `--help`, `--cfg job` and config errors
answer instantly. Task functions import their heavy modules inside.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ferlab import labels
from ferlab.config.searchpath import conf_root, user_searchpath_overrides, with_user_configs
from ferlab.errors import DiskFull, FerlabError, Interrupted, Preempted, resume_message
from ferlab.weights import resolve_checkpoint

CONF_DIR = str(conf_root())  # ferlab's own configs, inside the package; user folders come after (searchpath.py)
log = logging.getLogger("ferlab")


def _run_id() -> str:
    """A short random id, fixed for this process, so two runs started in the same second never collide."""
    return os.environ.setdefault("FERLAB_RUN_ID", secrets.token_hex(3))


def register_resolvers() -> None:
    """`${ferlab.labels:fer2013}`, `${ferlab.num_classes:fer2013}`, `${ferlab.run_id:}` and `${ferlab.tb_run:}`."""
    OmegaConf.register_new_resolver("ferlab.labels", lambda name: ListConfig(labels.class_names(name)), replace=True)
    OmegaConf.register_new_resolver("ferlab.num_classes", lambda name: len(labels.class_names(name)), replace=True)
    OmegaConf.register_new_resolver("ferlab.len", len, replace=True)  # data=folder: num_classes of a user class list
    OmegaConf.register_new_resolver("ferlab.head_outputs", _head_outputs, replace=True)  # head=va|expr_va: model width
    OmegaConf.register_new_resolver("ferlab.run_id", _run_id, replace=True)
    OmegaConf.register_new_resolver("ferlab.tb_run", _tb_run, replace=True, use_cache=True)


def _head_outputs(kind: str, num_classes: int) -> int:
    """The network's output width for a `head=` kind and the data's class count (`ferlab.lit.heads.Head.outputs`)."""
    from ferlab.lit.heads import Head

    return Head(kind, num_classes).outputs


def _tb_run() -> str:
    """A sweep job's TensorBoard run name (ferlab.search.tbname); "" in a single run."""
    from ferlab.search.tbname import sweep_run_name

    return sweep_run_name()


register_resolvers()


def output_dir() -> Path | None:
    """This job's run directory, when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _rank_zero() -> bool:
    # global rank: RANK (torchrun, Lightning) or SLURM_PROCID (one SLURM task per rank, trainer=ddp_multinode)
    return all(int(os.environ.get(v, "0")) == 0 for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def _job_dir(cfg: DictConfig) -> Path | None:
    """Where this job writes: `paths.output_dir` (a resumed run continues in its own dir), else Hydra's."""
    try:
        out = OmegaConf.select(cfg, "paths.output_dir", default=None)
    except Exception:  # an interpolation that cannot resolve outside Hydra
        out = None
    return Path(out) if out else output_dir()


def compose_run(
    config_name: str, overrides: Sequence[str], run_dir: str | Path, config_dir: str | Path | None = None
) -> DictConfig:
    """conf/<config_name>.yaml composed in-process as `ferlab <task>` would compose it, with `run_dir` as the
    run directory: for notebooks, tests and benchmarks calling `run_train(cfg)` and friends directly.
    `config_dir`: the user's config folder (default: ./conf when the current folder has one)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        overrides = user_searchpath_overrides([f"hydra.run.dir={run_dir}", *overrides], config_dir)
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations resolve as in a run
    with open_dict(cfg):
        del cfg.hydra
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return cfg


def require_checkpoint(ckpt_path: Any) -> Path:
    """The file of the `ckpt_path` a task needs (`builtin:<name>`: one shipped with ferlab), given and a file;
    checked before heavy imports so mistakes answer at once."""
    if not ckpt_path:
        raise FerlabError("ckpt_path is required (a ferlab checkpoint, e.g. outputs/train/runs/<run>/checkpoints/best.ckpt,"
                          " or builtin:fer2013_mini_xception)")
    path = resolve_checkpoint(ckpt_path)
    if not path.is_file():
        raise FerlabError(f"checkpoint not found: {ckpt_path}")
    return path


def user_model(cfg: DictConfig) -> dict[str, Any] | None:
    """The user's own model config (`+model._target_=...` on eval/predict/export/explain/demo): trusted like
    any config the user composes, for a network outside ferlab's registry; None rebuilds the checkpoint's own."""
    chosen = cfg.get("model")
    return OmegaConf.to_container(chosen, resolve=True) if chosen else None


class JobFailed(RuntimeError):
    """A sweep job's failure, re-raised as an ordinary exception so the sweep records it and goes on."""


def _unwrap_user_error(e: BaseException) -> BaseException:
    """A FerlabError raised inside `instantiate` (e.g. a model's bad argument) arrives wrapped by Hydra; so does a
    config whose keys do not fit its `_target_` (a TypeError on the call): both are one line for the user."""
    from hydra.errors import InstantiationException

    if not isinstance(e, InstantiationException):
        return e
    if isinstance(e.__cause__, FerlabError):
        return e.__cause__
    if isinstance(e.__cause__, TypeError) and "argument" in str(e.__cause__):
        return FerlabError(" ".join(str(e).split()))  # Hydra's message names the target and the argument
    return e


def _as_reported(e: BaseException, cfg: DictConfig) -> BaseException:
    """The error as the user should see it: Ctrl-C outside the training loop as `Interrupted`, a user error from
    inside `instantiate` unwrapped, a Lightning misconfiguration as a FerlabError naming the key."""
    from ferlab.lit.user_errors import as_user_error

    if isinstance(e, KeyboardInterrupt):
        from ferlab.runs.runfiles import LAST

        out = _job_dir(cfg)
        resumable = out is not None and (out / LAST).is_file()
        return Interrupted(resume_message("interrupted", out if resumable else None))
    e = _unwrap_user_error(e)
    return as_user_error(e) or e


def _record(cfg: DictConfig, e: BaseException) -> None:
    """failed.json in the job's dir (rank 0 only); skipped silently when it cannot be written (a full disk)."""
    from ferlab.runs.runfiles import write_failed

    out = _job_dir(cfg)
    if out is not None and _rank_zero():
        try:
            write_failed(out, e)
        except (OSError, DiskFull):  # the error line below is what matters
            pass


def guarded(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task; on failure write failed.json, print user errors as one line, keep sweeps going.

    A run stopped by a signal (`Preempted`; Ctrl-C: `Interrupted`, exit status 130) stops a sweep as well: the
    ferlab sweeper starts no further job.
    """
    try:
        return fn(cfg)
    except BaseException as e:  # SystemExit too: one job must not take a sweep down
        e = _as_reported(e, cfg)
        if isinstance(e, SystemExit) and not e.code and not _in_multirun():  # in a sweep, exit(0) ends a job only
            raise
        _record(cfg, e)
        message = str(e) if isinstance(e, (FerlabError, Preempted)) else f"{type(e).__name__}: {e}"
        if _in_multirun():
            if isinstance(e, Preempted):
                log.error("job stopped: %s", message)
                raise e from None
            log.error("job failed: %s", message)
            raise JobFailed(message) from e
        if isinstance(e, (FerlabError, SystemExit)):
            print(f"ferlab: error: {message}", file=sys.stderr)
            sys.exit(e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1)
        raise  # a bug, not a user mistake: Hydra prints its traceback


def _reuse_group_listing_repo() -> None:
    """Make `--help` fast: Hydra 1.3 lists each config group's options through a config repository it rebuilds
    (deep copies included) per call, over 100 times for ferlab's tree (seconds). Calls without overrides all
    see the same repository and the same answers, so both are kept; calls with overrides keep Hydra's path."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.object_type import ObjectType

    original = ConfigLoaderImpl.get_group_options
    if getattr(original, "ferlab_reuses_repo", False):
        return

    def get_group_options(self, group_name, results_filter=ObjectType.CONFIG, config_name=None, overrides=None):
        if config_name is not None or overrides:
            return original(self, group_name, results_filter, config_name, overrides)
        if "_ferlab_repo" not in self.__dict__:
            self._ferlab_repo = self._parse_overrides_and_create_caching_repo(None, [])[1]
            self._ferlab_options = {}
        key = (group_name, results_filter)
        if key not in self._ferlab_options:  # --help asks for every group three times
            self._ferlab_options[key] = self._ferlab_repo.get_group_options(group_name, results_filter)
        return list(self._ferlab_options[key])

    get_group_options.ferlab_reuses_repo = True
    ConfigLoaderImpl.get_group_options = get_group_options


def hydra_task(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Decorator turning `run_x(cfg)` into a Hydra entry point reading `conf/<config_name>.yaml`."""
    import hydra

    _reuse_group_listing_repo()

    def decorate(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
        @functools.wraps(fn)
        def main(cfg: DictConfig) -> Any:
            return guarded(fn, cfg)

        return with_user_configs(main)

    return decorate
