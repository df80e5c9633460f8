"""`ferlab train`: compose the config, build everything with `instantiate`, fit, test, write the run files."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ferlab import trackers
from ferlab.config.runner import hydra_task

log = logging.getLogger("ferlab.tasks.train")


def build(cfg: DictConfig) -> dict[str, Any]:
    """Datamodule, LightningModule, callbacks, loggers and trainer from a composed config."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import BaseFinetuning, LearningRateMonitor

    from ferlab.checkpoints import resilience
    from ferlab.checkpoints.preemption import Preemption
    from ferlab.lit.callbacks import MetricsHistory
    from ferlab.lit.classifier import Classifier
    from ferlab.lit.finetune import optimizer_factory
    from ferlab.search.pruning import trial_callbacks

    datamodule = instantiate(cfg.data, augment=instantiate(cfg.augment))
    optimizer, backbone_lr_mult = optimizer_factory(cfg.optim)
    net = instantiate(model_config(cfg.model))
    weights = load_reports(net, cfg)
    model = Classifier(
        net=net,
        optimizer=optimizer,
        scheduler=instantiate(cfg.sched),
        loss=instantiate(cfg.loss),
        num_classes=cfg.data.num_classes,
        class_names=list(cfg.data.class_names),
        test_prefixes=list(datamodule.test_splits),
        config=OmegaConf.to_container(cfg, resolve=True),
        backbone_lr_mult=backbone_lr_mult,
        fresh_modules=fresh_modules(weights),
        tta=instantiate(cfg.tta) if cfg.get("tta") else None,
        head=instantiate(cfg.head) if cfg.get("head") else None,
        method=instantiate(cfg.train_method) if cfg.get("train_method") else None,  # wraps the net, checks it
    )
    # a tracker that cannot be reached is left out (None): the run logs locally
    loggers = trackers.local_only([instantiate(c) for c in (cfg.get("logger") or {}).values() if c],
                                  Path(cfg.paths.output_dir))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    # learning rates set at epoch start (BackboneFinetuning) before LearningRateMonitor logs them
    callbacks.sort(key=lambda c: not isinstance(c, BaseFinetuning))
    # always on, whatever `callbacks=` says
    callbacks += [MetricsHistory(), *resilience.callbacks(callbacks), Preemption()]
    callbacks += trial_callbacks(cfg.get("optimized_metric"))  # an Optuna trial: report each epoch, maybe prune
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return {"datamodule": datamodule, "model": model, "trainer": trainer, "weights": weights}


def model_config(model: DictConfig) -> DictConfig:
    """`model` without a `pretrained: null` its `_target_` does not take: debug=smoke turns pretrained weights off
    on every model, and a model class of the user's own need not have that argument."""
    import inspect

    from hydra.utils import get_object

    if "pretrained" not in model or model.pretrained is not None:
        return model
    try:
        params = inspect.signature(get_object(model._target_)).parameters
    except (ImportError, AttributeError, TypeError, ValueError):  # instantiate says what is wrong with the target
        return model
    if "pretrained" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return model
    trimmed = model.copy()
    with open_dict(trimmed):
        del trimmed["pretrained"]
    return trimmed


def fresh_modules(weights: dict[str, dict]) -> list[str]:
    """Modules the last weight load (init_from over model.pretrained) left initialised anew, besides the head."""
    last = weights.get("init_from") or weights.get("pretrained") or {}
    return sorted(m for m in last.get("skipped", {}) if m != "head")


def load_reports(net: Any, cfg: DictConfig) -> dict[str, dict]:
    """Load `init_from`'s network weights into `net`; what `model.pretrained` and `init_from` loaded, for
    metrics.json (init_from comes second, so its weights win)."""
    from ferlab.checkpoints.init_from import init_weights, resolve_init_from

    reports = {}
    if getattr(net, "load_report", None) is not None:
        reports["pretrained"] = net.load_report.as_dict()
    path = resolve_init_from(cfg)
    if path is not None:
        reports["init_from"] = init_weights(net, path).as_dict()
    return reports


@trackers.tracked  # MLflow / W&B runs started on the way end with this run's outcome and files
def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test when `cfg.test`), write metrics.json into the run dir and return its contents."""
    from ferlab.config.validate import validate

    validate(cfg)  # before the heavy imports: a config mistake is reported in a fraction of a second
    trackers.require_packages(cfg)  # logger=mlflow without mlflow: the extra to install, at once
    import pytorch_lightning as pl

    from ferlab.checkpoints.preemption import signals_stop
    from ferlab.checkpoints.resume import check_fits, resolve_ckpt_path
    from ferlab.lit.summary import quiet_lightning
    from ferlab.runs.runfiles import print_summary

    quiet_lightning()
    start = time.time()
    ckpt_path = resolve_ckpt_path(cfg)  # may point paths.output_dir at the run being continued
    if ckpt_path and cfg.get("init_from"):
        log.info("resuming from %s: init_from=%s is not loaded (the checkpoint has the weights)", ckpt_path,
                 cfg.init_from)
        with open_dict(cfg):
            cfg.init_from = None
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    parts = build(cfg)
    trainer, model, datamodule = parts["trainer"], parts["model"], parts["datamodule"]
    if ckpt_path is not None:  # another model's checkpoint is one line, not Lightning's list of missing keys
        check_fits(ckpt_path, model, model.hparams.config)
    with signals_stop(trainer):  # a stop between the stages or while the files are written: the resume line
        metrics = _fit_and_test(cfg, trainer, model, datamodule, ckpt_path, parts["weights"], start)
    if trainer.is_global_zero:
        print_summary(metrics, Path(cfg.paths.output_dir))
    return metrics


def _fit_and_test(cfg: DictConfig, trainer, model, datamodule, ckpt_path: str | None, weights: dict,
                  start: float) -> dict[str, Any]:
    """Fit, test the best checkpoint when `cfg.test`, and write the run's files (metrics.json last: it exists only
    for a run that finished)."""
    from ferlab.checkpoints.preemption import stoppable
    from ferlab.lit.callbacks import scalars
    from ferlab.runs.runfiles import write_json
    from ferlab.search.hparams import log_hparams
    from ferlab.search.pruning import pruned

    stoppable(trainer.fit)(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    final = scalars(trainer.callback_metrics)  # the last epoch's metrics; trainer.test replaces them
    stopped_by_pruner = pruned(trainer)
    test_metrics = {}
    if cfg.get("test") and not trainer.interrupted and not stopped_by_pruner:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results = stoppable(trainer.test)(model, datamodule=datamodule, ckpt_path=best or None, verbose=False,
                                           weights_only=True)
        test_metrics = {k: v for r in results for k, v in r.items()}
    metrics = collect_metrics(cfg, trainer, datamodule, final, test_metrics, time.time() - start, weights)
    if stopped_by_pruner:  # the run dir says so; `ferlab report` lists it as pruned
        metrics["pruned"] = stopped_by_pruner
    run_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        log_hparams(trainer.loggers, cfg, metrics)  # TensorBoard's HPARAMS view compares a sweep's runs
        if test_metrics:  # per-class report + confusion matrix of the tested checkpoint, <run>/eval/
            from ferlab.analysis.report import report_after_training

            report_after_training(trainer, model, datamodule, run_dir)
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def collect_metrics(
    cfg: DictConfig, trainer, datamodule, final: dict, test: dict, wall_time: float, weights: dict | None = None
) -> dict[str, Any]:
    """What metrics.json holds: best epoch and score, final and test metrics, history, sizes, paths, and the load
    reports of `model.pretrained` / `init_from` (`weights`: tensors loaded, adapted, modules re-initialised)."""
    from ferlab.lit.callbacks import MetricsHistory
    from ferlab.runs.version import version_info

    history = next(c for c in trainer.callbacks if isinstance(c, MetricsHistory)).history
    ckpt = trainer.checkpoint_callback
    sign = 1 if cfg.monitor_mode == "max" else -1
    scored = [r for r in history if cfg.monitor in r]
    best_row = max(scored, key=lambda r: sign * r[cfg.monitor]) if scored else {}
    return {
        "best": {"monitor": cfg.monitor, "mode": cfg.monitor_mode, "score": best_row.get(cfg.monitor),
                 "epoch": best_row.get("epoch")},
        "best_epoch_metrics": {k: v for k, v in best_row.items() if k not in ("epoch", "step")},
        "final": {k: v for k, v in final.items() if k not in test},
        "test": test,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": wall_time,
        "dataset": {"name": datamodule.name, "sizes": datamodule.sizes, "meta": datamodule.meta},
        "checkpoints": {"best": ckpt.best_model_path if ckpt else None, "last": _last_path(trainer)},
        "weights": weights or {},
        "history": history,
        "ferlab": version_info(),  # the code that made this result: version, and git commit from a checkout
    }


def _last_path(trainer) -> str | None:
    from ferlab.checkpoints.resilience import last_checkpoint

    last = last_checkpoint(trainer)
    return str(last) if last is not None and last.exists() else None


def _objective(cfg: DictConfig) -> Any:
    """The Hydra task: train, then hand the optimized metric to a sweeper (Optuna) if one is named, or `Pruned`
    when the search's pruner stopped the run."""
    metrics = run_train(cfg)
    if metrics.get("pruned"):
        from ferlab.search.trial import Pruned

        return Pruned(**metrics["pruned"])
    from ferlab.search.trial import objective_value

    return objective_value(metrics, cfg.get("optimized_metric"))


main = trackers.with_logger_check(hydra_task("train")(_objective))

if __name__ == "__main__":
    main()
