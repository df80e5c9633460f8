"""A run's hyperparameters and final metrics in TensorBoard's HPARAMS view.

Logged once at the end of `ferlab train`, so every run of a sweep (all under one sweep dir) appears as one
row of the HPARAMS table in `tensorboard --logdir <sweep dir>` (or `make tb`). The hyperparameters are the
config group choices, the main numbers of the recipe, and every override of the command line or sweep.
Metrics are logged as `hp/<name>` so they do not add points to the per-epoch curves.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ferlab.runs.runfiles import headline_metrics

GROUPS = ("data", "model", "augment", "optim", "sched", "loss", "trainer", "experiment")
RECIPE = ("seed", "optim.lr", "optim.weight_decay", "data.batch_size", "data.image_size", "data.sampler",
           "trainer.max_epochs", "trainer.precision", "model.drop_rate", "sched.warmup_epochs")


def _scalar(value: Any) -> str | int | float | bool:
    """TensorBoard takes str, number or bool; lists, dicts and None become text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return str(value)


def _parse(text: str) -> str | int | float:
    """An override's value as a number when it is one, so the HPARAMS view can sort and plot it."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """Group choices, the recipe's main numbers and every override, flat and TensorBoard-ready."""
    from hydra.core.hydra_config import HydraConfig

    params: dict[str, Any] = {}
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is not None:
        choices = hydra.runtime.choices
        params.update({g: str(choices.get(g)) for g in GROUPS if g in choices})
    for key in RECIPE:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            params[key] = _scalar(value)
    if hydra is not None:
        for item in hydra.overrides.task:
            key, _, value = str(item).partition("=")
            params[key.lstrip("+~")] = _parse(value)
    return params


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """`hp/<metric>`: the best epoch's val metrics (the tested checkpoint) and the test metrics, per-class left out."""
    return {f"hp/{k}": float(v) for k, v in headline_metrics(metrics).items() if isinstance(v, (int, float))}


def log_hparams(loggers: list, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Write the HPARAMS summary into every TensorBoard logger of the run."""
    from pytorch_lightning.loggers import TensorBoardLogger

    boards = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
    if not boards:
        return
    params, values = hyperparameters(cfg), final_metrics(metrics)
    for board in boards:
        board.log_hyperparams(params, metrics=values)
        board.finalize("success")  # flush the events now; the run is over
