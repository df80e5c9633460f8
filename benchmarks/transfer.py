"""Does fine-tuning help? Synthetic faces: pretrain once on 10,000 faces, then train on 300 faces of a harder
difficulty for a budget of epochs, three ways, with the same data, model, optimizer, schedule and budget:

- scratch: random initialisation;
- init_from: every weight from the pretrained run (`init_from=<its run dir>`), all of them trained;
- init_from + frozen backbone: the same, with `callbacks=backbone_finetuning`: only the head trains for the first
  quarter of the budget, then the backbone joins at 0.1 x the head's rate, growing x1.5 per epoch.

Faces come from `data=synthetic` (ferlab's renderer). Pretraining: 10,000 faces at difficulty 0.5 (seed 0; 8,000
train). Target task: difficulty 0.8 (weaker expression cues, more nuisance; seed 1, other faces): 300 training
faces, 300 validating (they select the tested epoch), 1,400 testing. Accuracy is on the 1,400. The default network
of `ferlab train` (ResNet-18 at half width), Adam 1e-3, cosine over the budget, batch 32, CPU.

    .venv/bin/python -m benchmarks.transfer [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import cli, compose_train, data_root, machine, table

PRETRAIN = {"num_images": 10_000, "difficulty": 0.5, "seed": 0, "epochs": 3}
TARGET = {"num_images": 2_000, "difficulty": 0.8, "seed": 1, "val_fraction": 0.15, "test_fraction": 0.7}  # 300 train
BUDGETS = (5, 10, 20)
QUICK = {"pretrain": {"num_images": 1_000, "epochs": 1}, "target": {"num_images": 1_000, "test_fraction": 0.4, "val_fraction": 0.3},
         "budgets": (2,)}
ARMS = {  # label -> overrides (init_from is added for the fine-tuned arms)
    "scratch": [],
    "init_from": [],
    "init_from + frozen backbone": ["callbacks=backbone_finetuning"],
}
COMMON = ["trainer=cpu", "logger=none", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
          "+trainer.enable_progress_bar=false", "data.batch_size=32"]


def _data(spec: dict[str, Any]) -> list[str]:
    """data=synthetic overrides for a set of faces, in a CSV of its own (its name carries every setting)."""
    name = "_".join(f"{k}{v}" for k, v in sorted(spec.items()) if k != "epochs")
    return ["data=synthetic", f"data.source.csv_path=${{paths.data_dir}}/transfer/{name}.csv",
            *(f"data.source.{k}={v}" for k, v in spec.items() if k != "epochs")]


def _train(runs: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """run_train in `runs/<name>`; faces rendered and cached under data_root() (kept for the next time)."""
    from ferlab.tasks.train import run_train

    cfg = compose_train(data_root(), [*COMMON, f"task_name={name}", f"paths.log_dir={runs}", *overrides], runs / name)
    return run_train(cfg)


def _arm(root: Path, label: str, budget: int, pretrained: Path, target: dict) -> tuple[float, float]:
    """Test accuracy and wall time (s) of one arm at one epoch budget."""
    extra = list(ARMS[label])
    if label != "scratch":
        extra.append(f"init_from={pretrained}")
    if "callbacks=backbone_finetuning" in extra:
        extra.append(f"callbacks.backbone_finetuning.unfreeze_backbone_at_epoch={max(1, budget // 4)}")
    name = f"{label.split()[0]}{'_frozen' if len(extra) > 1 else ''}_{budget}"
    metrics = _train(root, name, [*_data(target), f"trainer.max_epochs={budget}", *extra])
    return metrics["test"]["test/acc"], metrics["wall_time_s"]


def _prepare(runs: Path, spec: dict[str, Any]) -> None:
    """Render and decode a set of faces once, so no timed run pays for it."""
    from hydra.utils import instantiate

    cfg = compose_train(data_root(), [*COMMON, f"paths.log_dir={runs}", *_data(spec)], runs / "prepare")
    instantiate(cfg.data).prepare_data()


def _verdict(results: dict, budgets: tuple[int, ...]) -> str:
    """One sentence: the smallest gain of the better fine-tuned arm over scratch, across the budgets."""
    gains = [max(results[(arm, b)][0] for arm in list(ARMS)[1:]) - results[("scratch", b)][0] for b in budgets]
    if min(gains) > 0.02:
        return f"Fine-tuning helps at every budget: +{min(gains) * 100:.1f} to +{max(gains) * 100:.1f} accuracy points."
    return (f"Fine-tuning does not help reliably here (gain {min(gains) * 100:+.1f} to {max(gains) * 100:+.1f} "
            "points).")


def main(quick: bool = False) -> str:
    """Pretrain, then every arm at every budget; the table as markdown."""
    import warnings

    warnings.filterwarnings("ignore")
    pre = {**PRETRAIN, **(QUICK["pretrain"] if quick else {})}
    target = {**TARGET, **(QUICK["target"] if quick else {})}
    budgets = QUICK["budgets"] if quick else BUDGETS
    with tempfile.TemporaryDirectory(prefix="ferlab-transfer-") as tmp:
        root = Path(tmp)
        _prepare(root, pre), _prepare(root, target)
        start = time.perf_counter()
        base = _train(root, "pretrain", [*_data(pre), f"trainer.max_epochs={pre['epochs']}"])
        pretrain_s = time.perf_counter() - start
        pretrained = Path(base["checkpoints"]["best"]).parents[1]  # its run dir: init_from takes best.ckpt
        results = {(label, b): _arm(root, label, b, pretrained, target) for b in budgets for label in ARMS}
    train_n = round(target["num_images"] * (1 - target["val_fraction"] - target["test_fraction"]))
    test_n = round(target["num_images"] * target["test_fraction"])
    rows = [(b, *(f"{results[(label, b)][0]:.3f}" for label in ARMS),
             *(f"{results[(label, b)][1]:.0f}" for label in ARMS)) for b in budgets]
    headers = ["epochs", *(f"{label} acc" for label in ARMS), *(f"{label} s" for label in ARMS)]
    return "\n".join([
        f"### Fine-tuning vs training from scratch on {train_n} harder synthetic faces",
        "",
        f"Machine: {machine()}. Pretraining: {pre['num_images']:,} faces at difficulty {pre['difficulty']}, "
        f"{pre['epochs']} epochs, {pretrain_s:.0f} s (val/acc {base['best']['score']:.3f}). Target: difficulty "
        f"{target['difficulty']}, {train_n} training faces; test accuracy on {test_n:,} faces; wall time per run "
        "(faces rendered and decoded beforehand; the test and its report included).",
        "",
        table(headers, rows, right=tuple(range(len(headers)))),
        "",
        _verdict(results, budgets),
    ])


if __name__ == "__main__":
    cli("transfer", main, __doc__.splitlines()[0])
