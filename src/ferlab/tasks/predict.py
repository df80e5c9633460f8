"""`ferlab predict`: faces in an image, a video or a folder, classified by a trained checkpoint (or its export).

Writes predictions.csv, predictions.json and annotated/ into the run directory
(outputs/predict/runs/<date>_<time>_<id>/) or into `output_dir=`, where existing results are kept
unless `overwrite=true`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ferlab.config.runner import hydra_task
from ferlab.errors import FerlabError

log = logging.getLogger("ferlab.tasks.predict")


def output_dir(cfg: DictConfig) -> Path:
    """Where results go; a folder that already holds results is refused unless `overwrite=true`."""
    from ferlab.infer.records import OUTPUT_FILES

    out = Path(cfg.output_dir) if cfg.get("output_dir") else Path(cfg.paths.output_dir)
    if out.exists() and not out.is_dir():
        raise FerlabError(f"output_dir {out} is a file, not a folder")
    existing = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    annotated = out / "annotated"
    if annotated.is_dir() and any(annotated.iterdir()):
        existing.append(annotated)
    if existing and not cfg.overwrite:
        raise FerlabError(f"{existing[0]} exists; pass overwrite=true to replace results in {out}")
    return out


def _check(cfg: DictConfig) -> Path:
    from ferlab.infer.media import VideoSource, media_kind, over_pixel_limit, read_image

    if not cfg.get("input"):
        raise FerlabError("input is required: an image, a video or a folder of them (input=path)")
    source = Path(str(cfg.input))
    if not source.exists():
        raise FerlabError(f"input not found: {source}")
    if cfg.max_pixels is not None and (not isinstance(cfg.max_pixels, int) or cfg.max_pixels < 1):
        raise FerlabError(f"max_pixels must be null or a positive number of pixels, got {cfg.max_pixels!r}")
    if source.is_file() and media_kind(source) == "image":
        if not over_pixel_limit(source, cfg.max_pixels):  # a huge one is skipped later, never decoded
            read_image(source)  # a bad file fails before the model is loaded
    elif source.is_file():
        VideoSource(source).close()
    if int(cfg.frame_stride) < 1 or (cfg.max_frames is not None and int(cfg.max_frames) < 1):
        raise FerlabError("frame_stride must be >= 1 and max_frames null or >= 1")
    return source


def detector_facts(detector: Any, cfg: DictConfig) -> dict[str, Any]:
    """What predictions.json says of the detector: its config, and the detector and crop actually used."""
    from ferlab.infer.preprocessing import describe

    return {**OmegaConf.to_container(cfg.detector, resolve=True), "used": describe(detector)}


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Detect and classify every face of `cfg.input`; write the results; return the summary and paths."""
    from rich.progress import Progress

    from ferlab.infer.pipeline import Job, predict_file, predict_folder
    from ferlab.infer.records import PredictionLog
    from ferlab.infer.setup import build_predictor

    source = _check(cfg)
    out = output_dir(cfg)
    predictor = build_predictor(cfg)
    model = predictor.model
    records = PredictionLog(predictor.class_names, {
        "backend": model.backend, "path": str(model.source), "input": model.spec.to_dict(),
        "detector": detector_facts(predictor.detector, cfg), "head": model.head.describe(),
    }, va=model.head.has_va)
    with Progress(disable=not cfg.progress, transient=True) as progress:
        job = Job(predictor, records, out / "annotated" if cfg.annotate else None, progress,
                  int(cfg.frame_stride), cfg.max_frames, bool(cfg.bars), cfg.max_pixels)
        if source.is_dir():
            predict_folder(job, source, bool(cfg.recursive), exclude=out)
        else:
            predict_file(job, source, Path(source.name))
    paths = records.write(out)
    summary = records.summary()
    print_summary(summary, out, predictor)
    return {"summary": summary, "files": [str(p) for p in paths], "output_dir": str(out)}


def print_summary(summary: dict[str, Any], out: Path, predictor: Any) -> None:
    """Counts per label, files without faces, skipped files, per-frame time, and where the results are."""
    from rich.console import Console
    from rich.table import Table

    t = predictor.timing
    table = Table(title="faces per label", caption=f"{summary['files']} file(s), {summary['frames']} frame(s)")
    table.add_column("label")
    table.add_column("faces", justify="right")
    for name, count in summary["labels"].items():
        table.add_row(name, str(count))
    table.add_row("total", str(summary["faces"]), style="bold")
    console = Console()
    console.print(table)

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, highlight=False)  # soft wrap: paths stay unbroken

    if t.frames:
        say(f"per frame: detection {1000 * t.detect / t.frames:.1f} ms, classification {1000 * t.classify / t.frames:.1f} ms")
    if summary["no_face"]:
        more = " ..." if len(summary["no_face"]) > 5 else ""
        say(f"no face found in {len(summary['no_face'])} file(s): {', '.join(summary['no_face'][:5])}{more}")
    if summary["skipped"]:
        skipped = summary["skipped"]  # each reason names its file
        more = " ..." if len(skipped) > 3 else ""
        say(f"skipped {len(skipped)} file(s): {'; '.join(s['reason'] for s in skipped[:3])}{more}")
    if summary["ignored"]:
        say(f"ignored {len(summary['ignored'])} file(s) that are neither images nor videos")
    say(f"results: {out / 'predictions.csv'}, {out / 'predictions.json'}")


main = hydra_task("predict")(run_predict)

if __name__ == "__main__":
    main()
