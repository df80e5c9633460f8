"""`ferlab eval`: a checkpoint on a split, as a per-class report and a confusion matrix (and, for a network
with valence/arousal outputs, their metrics and 2-D histograms).

Everything comes from the checkpoint: the network, class names, input size, normalization and the data
config (unless `data=` or `+data.*` is given). Data of other classes (`data=fer2013` for a RAF-DB model) is
evaluated on the classes it shares with the model, matched by name (`ferlab.analysis.cross_dataset`).
Results go to `<run>/eval/` beside the checkpoint's run (a sub-folder named after what differs from the
training-time report: `last`, `val`, `data_<name>`, `tta_<mode>`), to `out_dir=`, or, for a checkpoint outside
a run dir, to this task's run dir.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ferlab.config.runner import hydra_task, require_checkpoint
from ferlab.errors import FerlabError

log = logging.getLogger("ferlab.eval")
SPLITS = ("test", "val", "train")


def eval_name(cfg: DictConfig, ckpt_path: str, data_name: str | None, tta: Any, trained_tta: Any) -> list[str]:
    """The parts naming an eval that differs from the training-time one (best checkpoint, test split, the test-time
    augmentation the run was tested with), so that report is never replaced by another."""
    stem = Path(ckpt_path).stem
    parts = [stem] if stem != "best" else []
    parts += [cfg.split] if cfg.split != "test" else []
    parts += [f"data_{data_name}"] if data_name else []
    return parts + ([f"tta_{tta.tag()}"] if tta.describe() != trained_tta.describe() else [])


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt_path` on `cfg.split`; write report.json, report.md, confusion_matrix.png; return the report."""
    require_checkpoint(cfg.get("ckpt_path"))
    if cfg.split not in SPLITS:
        raise FerlabError(f"split: expected one of {', '.join(SPLITS)}, got {cfg.split!r}")
    from hydra.utils import instantiate

    from ferlab.analysis.common import load, output_dir, split_sets
    from ferlab.analysis.cross_dataset import cross_section, map_sets, summary_line
    from ferlab.analysis.report import build_report, evaluate_sets, write_report
    from ferlab.analysis.tta import stored_tta

    chosen = instantiate(cfg.tta) if cfg.get("tta") else None  # a mistake in tta= answers before loading
    loaded = load(cfg, by_name=True)
    dm, restored, cmap = loaded.datamodule, loaded.restored, loaded.class_map
    warn_preprocessing(loaded)
    trained = stored_tta(restored.config.get("tta"), str(cfg.ckpt_path))  # what the run was tested with
    tta = chosen or trained
    name = eval_name(cfg, str(cfg.ckpt_path), dm.name if loaded.data_changed else None, tta, trained)
    out = output_dir(cfg, "eval", name)
    sets, dropped = split_sets(dm, cfg.split), {}
    if cmap is not None:  # another dataset's classes: its images of shared classes, targets as the model's ids
        sets, dropped = map_sets(sets, cmap)
    names = restored.class_names if cmap is not None else dm.class_names
    reports = evaluate_sets(restored.net, dm, sets, loaded.device, tta, int(cfg.top_pairs), cfg.batch_size,
                            head=restored.head, class_names=names)
    _check_scored(reports, restored, dm.name)
    cross = cross_section(cmap, dropped, reports) if cmap is not None else None
    if cross:
        log.info(summary_line(cross))
    report = build_report(reports, names, checkpoint=str(cfg.ckpt_path), data=dm.name, split=cfg.split, tta=tta,
                          head=restored.head, cross_dataset=cross)
    writers = [_writer(out)] if cfg.get("tensorboard", True) else []
    try:
        paths = write_report(report, out, writers)
    finally:
        for writer in writers:
            writer.close()
    print_summary(report, paths)
    return {**report, "output_dir": str(out), "files": [str(p) for p in paths]}


def warn_preprocessing(loaded: Any) -> None:
    """One line when the data's faces were cut otherwise than the checkpoint's (e.g. unaligned photos for a model
    trained on `ferlab align` crops)."""
    import sys

    from ferlab.infer.preprocessing import data_differences

    recorded = (loaded.restored.preprocessing or {}).get("face")
    for line in data_differences(recorded, loaded.datamodule.meta.get("preprocessing"), loaded.datamodule.name):
        print(line, file=sys.stderr)


def _check_scored(reports: dict[str, dict], restored: Any, data: str) -> None:
    """A network with valence/arousal outputs only, on data without them, has nothing to be scored on."""
    if not any("accuracy" in r or r.get("va") for r in reports.values()):
        raise FerlabError(f"{restored.path} predicts valence/arousal only (head={restored.head.kind}), but data "
                          f"{data!r} has no valence/arousal annotations to score them against")


def _writer(out: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tensorboard"))


def print_summary(report: dict[str, Any], paths: list[Path]) -> None:
    """Accuracy and F1 (and CCC with valence/arousal) per split, and where the files are."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ferlab eval ({report['data']}, tta {report['tta']['mode']})")
    va = any(split.get("va") for split in report["splits"].values())
    columns = ["split", "images", "accuracy", "macro-F1", "weighted F1", "most confused"]
    columns += ["CCC valence", "CCC arousal"] if va else []
    for column in columns:
        table.add_column(column, justify="left" if column in ("split", "most confused") else "right")
    for prefix, split in report["splits"].items():
        cells = [prefix + (" (also val)" if split["validation_split"] else ""), str(split["num_images"])]
        if "accuracy" in split:
            pair = split["most_confused"][0] if split["most_confused"] else None
            cells += [f"{split['accuracy']:.4f}", f"{split['macro']['f1']:.4f}", f"{split['weighted']['f1']:.4f}",
                      f"{pair['true']} -> {pair['pred']} ({pair['count']})" if pair else "-"]
        else:
            cells += ["-"] * 4
        if va:
            cells += [f"{split['va'][d]['ccc']:.4f}" if split.get("va") else "-" for d in ("valence", "arousal")]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    if report.get("cross_dataset"):
        from ferlab.analysis.cross_dataset import summary_line

        console.print(summary_line(report["cross_dataset"]), soft_wrap=True, highlight=False)
    console.print(f"report: {paths[1]}", soft_wrap=True, highlight=False)


main = hydra_task("eval")(run_eval)

if __name__ == "__main__":
    main()
