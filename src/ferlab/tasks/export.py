"""`ferlab export`: a checkpoint's network as ONNX or TorchScript (dynamic batch), parity-checked and printed.

The file goes beside the checkpoint (best.ckpt -> best.onnx / best.torchscript.pt) unless `out_path=`;
`ferlab predict backend=onnx|torchscript` finds it there. A built-in checkpoint (`builtin:<name>`) is exported
into this task's run directory, never into the installed package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ferlab.config.runner import hydra_task, require_checkpoint, user_model
from ferlab.errors import FerlabError
from ferlab.weights import is_builtin


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Export, check parity, print the result; returns path, format and the logit differences."""
    from ferlab.checkpoints.restore import restore
    from ferlab.infer.backends import exported_path
    from ferlab.infer.export import FORMATS, export

    ckpt = require_checkpoint(cfg.get("ckpt_path"))
    if cfg.format not in FORMATS:
        raise FerlabError(f"format: expected one of {', '.join(FORMATS)}, got {cfg.format!r}")
    beside = Path(cfg.paths.output_dir) / ckpt.name if is_builtin(cfg.ckpt_path) else ckpt
    out = Path(cfg.out_path) if cfg.get("out_path") else exported_path(beside, cfg.format)
    if out.exists() and not cfg.overwrite:
        raise FerlabError(f"{out} exists; pass overwrite=true to replace it")
    restored = restore(ckpt, map_location="cpu", model=user_model(cfg))
    result = export(restored, cfg.format, out, opset=int(cfg.opset), exporter=str(cfg.exporter),
                    batches=tuple(cfg.check_batches), atol=float(cfg.atol), seed=int(cfg.seed))
    diffs = ", ".join(f"batch {b}: {d:.2e}" for b, d in result.diffs.items())
    print(f"exported {cfg.format} model to {out}")
    print(f"parity: max |logit difference| vs PyTorch = {result.max_abs_diff:.2e} ({diffs}; atol {result.atol:g})")
    return {"path": str(out), "format": cfg.format, "max_abs_diff": result.max_abs_diff,
            "diffs": result.diffs}


main = hydra_task("export")(run_export)

if __name__ == "__main__":
    main()
