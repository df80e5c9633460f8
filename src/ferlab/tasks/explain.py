"""`ferlab explain`: saliency maps, Grad-CAM, filter visualization, most confident errors and the prototype
classifier of a checkpoint, as PNG grids, JSON and TensorBoard images.

The network, data and normalization come from the checkpoint (as for `ferlab eval`). Results go to
`<run>/explain/` beside the checkpoint's run (`<run>/explain/<split>` for another split than test, with
`-<ckpt name>` / `-data_<name>` when those differ), to `out_dir=`, or to this task's run dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from ferlab.config.runner import hydra_task, require_checkpoint
from ferlab.errors import FerlabError
from ferlab.tasks.evaluate import warn_preprocessing

METHOD_NAMES = ("saliency", "gradcam", "filters", "misclassified", "prototypes")
TARGETS = ("label", "pred")  # saliency/gradcam: explain the labelled or the predicted class


def methods(value: Any) -> list[str]:
    """`method=`: one name, `all`, or a list of names -> the method names, in order."""
    names = list(value) if isinstance(value, (list, tuple, ListConfig)) else [str(value)]
    names = list(METHOD_NAMES) if names == ["all"] else [str(n) for n in names]
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown or not names:
        raise FerlabError(f"method: expected {', '.join(METHOD_NAMES)}, all or a list of them, got {value!r}")
    return names


def choose_split(datamodule: Any, split: str) -> tuple[str, Any, Any]:
    """(name, uint8 images, targets) explained: test = the first test split, a test split's name, val or train."""
    from ferlab.analysis.common import split_sets

    tests = split_sets(datamodule, "test")
    if split == "test":
        split = next(iter(tests))
    if split in tests:
        return split, *tests[split]
    if split in ("val", "train"):
        return split, *datamodule.splits[split]
    raise FerlabError(f"split: expected test, val, train or one of {', '.join(tests)}, got {split!r}")


def explain_name(cfg: DictConfig, data_name: str | None) -> list[str]:
    """Sub-folder parts for an explain that is not of best.ckpt on the checkpoint's own test data."""
    stem = Path(str(cfg.ckpt_path)).stem
    parts = [stem] if stem != "best" else []
    parts += [str(cfg.split)] if cfg.split != "test" else []
    return parts + ([f"data_{data_name}"] if data_name else [])


def run_explain(cfg: DictConfig) -> dict[str, Any]:
    """Run every chosen method; return the output folder and the files written per method."""
    chosen = methods(cfg.method)
    if cfg.target not in TARGETS:
        raise FerlabError(f"target: expected {' or '.join(TARGETS)}, got {cfg.target!r}")
    require_checkpoint(cfg.get("ckpt_path"))
    from ferlab.analysis.common import load, output_dir
    from ferlab.analysis.explain_methods import METHODS, Context

    loaded = load(cfg)
    if not loaded.restored.head.has_classes:
        raise FerlabError(f"{cfg.ckpt_path} predicts valence/arousal only (head=va): ferlab explain explains class "
                          "scores; a head=expr_va checkpoint has both")
    warn_preprocessing(loaded)
    split, images, targets = choose_split(loaded.datamodule, str(cfg.split))
    out = output_dir(cfg, "explain", explain_name(cfg, loaded.datamodule.name if loaded.data_changed else None))
    writers = [_writer(out)] if cfg.get("tensorboard", True) else []
    ctx = Context(loaded, cfg, out, writers, split, images, targets)
    files: dict[str, list[str]] = {}
    try:
        for name in chosen:
            files[name] = [str(p) for p in METHODS[name](ctx)]
            print(f"{name}: {', '.join(Path(p).name for p in files[name])}")
    finally:
        for writer in writers:
            writer.close()
    print(f"explain results: {out}")
    return {"output_dir": str(out), "split": split, "files": files}


def _writer(out: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tensorboard"))


main = hydra_task("explain")(run_explain)

if __name__ == "__main__":
    main()
