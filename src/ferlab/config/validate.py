"""Check a composed train config before any work starts: every problem found, in one line naming its keys.

Hydra already rejects unknown keys and groups. This catches values Hydra cannot judge (a negative learning
rate, a batch size of 0, an unknown precision, a monitor metric that is never logged, a dataset path that does
not exist, a GPU preset without a GPU) before data is decoded or a model built. Light on purpose: torch is imported
only to check a GPU preset.

Single-key rules are rows of `RULES`; checks that look at several keys are functions in `CHECKS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ferlab.errors import DataNotFound, FerlabError
from ferlab.lit.heads import KINDS, VA_METRIC_NAMES, Head

# what the Classifier logs during fit (DESIGN.md "Metric names"), plus ModelCheckpoint's own candidates;
# LearningRateMonitor adds `lr-<optimizer>` names; a head with valence/arousal outputs (head=va|expr_va) adds
# val/ccc_valence, val/rmse_arousal, ..., val/ccc_mean
CLASS_METRICS = ("train/acc", "val/acc", "val/f1_macro")
FIT_METRICS = ("train/loss", *CLASS_METRICS, "val/loss", "epoch", "step", *(f"val/{m}" for m in VA_METRIC_NAMES))
# Lightning 2.6's accepted `precision` values (lightning_fabric.connector._PRECISION_INPUT; a test keeps them equal)
PRECISIONS = ("64", "32", "16", "bf16", "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed",
              "bf16-true", "bf16-mixed", "32-true", "64-true")
# data.source keys naming files or folders to read; sources in this module render their own files instead
PATH_SUFFIXES = ("_path", "_dir", "_csv", "_file", "root")
GENERATING_MODULE = "ferlab.data.sources.synthetic"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fraction_or_count(v: Any) -> bool:
    return v is None or (_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


def _metric(v: Any) -> bool:
    return v is None or v in FIT_METRICS or (isinstance(v, str) and v.startswith("lr-"))


@dataclass(frozen=True)
class Rule:
    """`key` (dotted; `*` matches every child) must satisfy `ok`; absent keys are skipped, and so are values equal
    to the key named by `same_as` (an interpolation like `${monitor}` is reported once, under `monitor`)."""

    key: str
    ok: Callable[[Any], bool]
    expect: str
    same_as: str | None = None


RULES: tuple[Rule, ...] = (
    Rule("optim.lr", lambda v: _number(v) and v > 0, "a learning rate > 0"),
    Rule("optim.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    Rule("optim.momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("data.batch_size", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    Rule("data.eval_batch_size", lambda v: v is None or (_int(v) and v >= 1), "null or an integer >= 1"),
    Rule("data.num_workers", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    Rule("data.image_size", lambda v: _int(v) and v >= 8, "an integer >= 8"),
    Rule("data.val_fraction", lambda v: v is None or (_number(v) and 0 < v < 1), "null or a fraction in (0, 1)"),
    Rule("trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    Rule("trainer.max_epochs", lambda v: v is None or (_int(v) and (v >= 1 or v == -1)), "an integer >= 1 (or -1)"),
    Rule("trainer.min_epochs", lambda v: v is None or (_int(v) and v >= 0), "null or an integer >= 0"),
    Rule("trainer.accumulate_grad_batches", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    Rule("trainer.gradient_clip_val", lambda v: v is None or (_number(v) and v >= 0), "null or a number >= 0"),
    Rule("trainer.limit_train_batches", _fraction_or_count, "null, a count >= 0 or a fraction in [0, 1]"),
    Rule("trainer.limit_val_batches", _fraction_or_count, "null, a count >= 0 or a fraction in [0, 1]"),
    Rule("trainer.limit_test_batches", _fraction_or_count, "null, a count >= 0 or a fraction in [0, 1]"),
    Rule("seed", _int, "an integer"),
    Rule("monitor", _metric, f"a metric logged during training: {', '.join(FIT_METRICS[:5])}, "
         "val/ccc_mean (head=va|expr_va) or lr-<optimizer>"),
    Rule("monitor_mode", lambda v: v in ("min", "max"), "min or max"),
    Rule("init_from", lambda v: v is None or (isinstance(v, str) and bool(v.strip())),
         "null, a checkpoint, a run directory or last:<task_name>"),
    Rule("callbacks.*.monitor", _metric, "a metric logged during training (see `monitor`)", same_as="monitor"),
    Rule("sched.monitor", _metric, "a metric logged during training (see `monitor`)", same_as="monitor"),
    Rule("optim.backbone_lr_mult", lambda v: _number(v) and v >= 0, "a number >= 0 (0: the backbone does not learn)"),
    Rule("augment.crop", lambda v: v is None or (_int(v) and v >= 1), "null or a side in pixels >= 1"),
    Rule("augment.mixup.alpha", lambda v: _number(v) and v > 0, "a number > 0"),
    Rule("augment.cutmix.alpha", lambda v: _number(v) and v > 0, "a number > 0"),
    Rule("augment.mixup.p", lambda v: _number(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    Rule("augment.cutmix.p", lambda v: _number(v) and 0 <= v <= 1, "a probability in [0, 1]"),
)


def _select(cfg: DictConfig, key: str) -> Iterator[tuple[str, Any]]:
    """(full key, value) for every node matching `key`, where a `*` segment matches each child."""
    head, _, rest = key.partition(".*.")
    if not rest:
        node = OmegaConf.select(cfg, key, default=KeyError)
        if node is not KeyError:
            yield key, node
        return
    parent = OmegaConf.select(cfg, head, default=None)
    if isinstance(parent, DictConfig):
        for child in parent:
            if isinstance(parent[child], DictConfig):
                yield from _select(cfg, f"{head}.{child}.{rest}")


def _rule_problems(cfg: DictConfig) -> Iterator[str]:
    for rule in RULES:
        for key, value in _select(cfg, rule.key):
            if rule.same_as and value == OmegaConf.select(cfg, rule.same_as, default=None):
                continue
            if not rule.ok(value):
                yield f"{key}={value!r} (expected {rule.expect})"


def _validation_disabled(cfg: DictConfig) -> Iterator[str]:
    """A val/* monitor is never logged when validation does not run."""
    monitor, limit = cfg.get("monitor"), OmegaConf.select(cfg, "trainer.limit_val_batches", default=None)
    if isinstance(monitor, str) and monitor.startswith("val/") and limit in (0, 0.0):
        yield f"monitor={monitor!r} is never logged: trainer.limit_val_batches={limit} disables validation"


def _epochs_order(cfg: DictConfig) -> Iterator[str]:
    lo, hi = (OmegaConf.select(cfg, f"trainer.{k}", default=None) for k in ("min_epochs", "max_epochs"))
    if _int(lo) and _int(hi) and hi != -1 and lo > hi:
        yield f"trainer.min_epochs={lo} is larger than trainer.max_epochs={hi}"


def _crop_and_mixing(cfg: DictConfig) -> Iterator[str]:
    """A training crop must fit the model's input; one batch is mixed one way at most."""
    crop, size = (OmegaConf.select(cfg, k, default=None) for k in ("augment.crop", "data.image_size"))
    if _int(crop) and _int(size) and crop > size:
        yield f"augment.crop={crop} is larger than the model's input side data.image_size={size}"
    p_mix, p_cut = (OmegaConf.select(cfg, f"augment.{k}.p", default=0) for k in ("mixup", "cutmix"))
    if _number(p_mix) and _number(p_cut) and p_mix + p_cut > 1:
        yield f"augment.mixup.p={p_mix} + augment.cutmix.p={p_cut} is more than 1 (one of them per batch)"


def _head(cfg: DictConfig) -> Iterator[str]:
    """A VA head needs VA batches and unmixed images; a head without classes logs no class metric to monitor."""
    kind = OmegaConf.select(cfg, "head.kind", default="classes")
    if kind not in KINDS:
        yield f"head.kind={kind!r} (expected one of {', '.join(KINDS)})"
        return
    if kind == "classes":
        return
    width, classes = (OmegaConf.select(cfg, k, default=None) for k in ("model.num_classes", "data.num_classes"))
    if _int(width) and _int(classes) and width != Head(kind, classes).outputs:
        yield (f"model.num_classes={width} but head={kind} reads {Head(kind, classes).outputs} outputs "
               f"(conf/head/{kind}.yaml sets model.num_classes)")
    if OmegaConf.select(cfg, "data.va_targets", default=False) is not True:
        yield f"head={kind} trains on valence/arousal: data.va_targets must be true (conf/head/{kind}.yaml sets it)"
    mixing = (OmegaConf.select(cfg, f"augment.{k}.p", default=0) for k in ("mixup", "cutmix"))
    if any(_number(p) and p > 0 for p in mixing):
        yield f"head={kind}: augment.mixup/cutmix mix images but not their valence/arousal; set their p to 0"
    if kind == "va":
        monitor = OmegaConf.select(cfg, "monitor", default=None)
        for key in ("monitor", "optimized_metric", "sched.monitor"):
            value = OmegaConf.select(cfg, key, default=None)
            if value in CLASS_METRICS and (key == "monitor" or value != monitor):  # ${monitor}: said once
                yield f"{key}={value!r} is never logged with head=va (no class outputs); e.g. {key}=val/ccc_mean"


def _one_weight_average(cfg: DictConfig) -> Iterator[str]:
    """EMA and SWA both swap averaged weights in for validation and checkpoints: one at a time."""
    targets = {name: str(node.get("_target_", "")) for name, node in (cfg.get("callbacks") or {}).items()
               if isinstance(node, DictConfig)}
    averaging = sorted(n for n, t in targets.items() if t.startswith("ferlab.lit.averaging.") or
                       t.endswith("WeightAveraging"))
    if len(averaging) > 1:
        yield f"callbacks {', '.join(averaging)} all average the weights; keep one (callbacks.<name>=null)"


def _relabeling_needs_ids(cfg: DictConfig) -> Iterator[str]:
    """SCN relabels each image's class id: batch mixing leaves no single class per image."""
    if OmegaConf.select(cfg, "train_method._target_", default=None) != "ferlab.methods.scn.SCN":
        return
    for name in ("mixup", "cutmix"):
        p = OmegaConf.select(cfg, f"augment.{name}.p", default=0)
        if _number(p) and p > 0:
            yield f"train_method=scn relabels class ids, but augment.{name}.p={p} mixes the targets (set it to 0)"


def _gpus_present(cfg: DictConfig) -> Iterator[str]:
    """A GPU preset on a machine without one (torch is imported only for this check)."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            yield f"trainer.accelerator={accelerator} but no CUDA GPU is visible (on CPU: trainer=cpu or trainer=ddp_sim)"


def _source_paths(node: Any, key: str) -> Iterator[str]:
    """Every file or folder a data source will read must exist (generating sources are skipped)."""
    if not isinstance(node, DictConfig) or str(node.get("_target_", "")).startswith(GENERATING_MODULE):
        return
    for name in node:
        value, full = node[name], f"{key}.{name}"
        if isinstance(value, DictConfig):
            yield from _source_paths(value, full)
        elif isinstance(value, str) and str(name).endswith(PATH_SUFFIXES) and not Path(value).exists():
            yield f"{full}: {value} does not exist"


def _missing_weights(cfg: DictConfig) -> Iterator[str]:
    """A weight file named by model.pretrained must exist (imagenet, true and null are not files)."""
    value = OmegaConf.select(cfg, "model.pretrained", default=None)
    if isinstance(value, str) and value not in ("imagenet", "true") and not Path(value).expanduser().exists():
        yield f"model.pretrained: {value} does not exist (give the weight file: model.pretrained=<file>)"


def _missing_data(cfg: DictConfig) -> Iterator[str]:
    return _source_paths(OmegaConf.select(cfg, "data.source", default=None), "data.source")


CHECKS: tuple[Callable[[DictConfig], Iterator[str]], ...] = (
    _rule_problems,
    _validation_disabled,
    _epochs_order,
    _crop_and_mixing,
    _head,
    _one_weight_average,
    _relabeling_needs_ids,
    _gpus_present,
    _missing_weights,
    _missing_data,
)


def problems(cfg: DictConfig) -> list[str]:
    """Everything wrong with `cfg`, one phrase per problem, each naming its key."""
    return [p for check in CHECKS for p in check(cfg)]


def validate(cfg: DictConfig) -> None:
    """Raise one FerlabError listing every problem in `cfg` (a DataNotFound when all are missing dataset files)."""
    found = problems(cfg)
    if found:
        error = DataNotFound if set(found) <= set(_missing_data(cfg)) else FerlabError
        raise error("invalid config: " + "; ".join(found))
