"""`ferlab align`: a folder of raw photos (class folders kept) -> aligned face crops in the same layout, a dataset
`data=fer5` / `data=folder` reads.

Each face's five landmarks (from `detector=`, or the dataset's own with `landmarks=rafdb|affectnet`) are warped onto
the ArcFace template (`detector.align_margin`, `size`). The output folder gets `align.json` (the settings; the folder
reader hands its `face` record to training, so checkpoints record how their faces were cut), `align_report.json` and
`align_report.md` (photos without a face, with several, unreadable files) and a hidden journal of finished photos:
an interrupted run continues with `resume=true`, skipping them. The input is only read; the output may be neither
inside it nor around it, and an existing output is refused unless `resume=true` or `overwrite=true` (which replaces
only a folder `ferlab align` wrote).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ferlab.config.runner import hydra_task
from ferlab.errors import FerlabError

log = logging.getLogger("ferlab.tasks.align")
MANIFEST, JOURNAL = "align.json", ".align-journal.jsonl"
REPORTS = ("align_report.json", "align_report.md")


def _folders(cfg: DictConfig) -> tuple[Path, Path]:
    """The input and output folders, checked: the output is neither the input, inside it, nor around it."""
    if not cfg.get("input") or not cfg.get("output"):
        raise FerlabError("input= (a folder of photos) and output= (a new folder for the aligned faces) are required")
    src, out = Path(str(cfg.input)), Path(str(cfg.output))
    if not src.is_dir():
        raise FerlabError(f"input folder not found: {src}")
    a, b = src.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise FerlabError(f"output {out} {'is' if a == b else 'lies inside' if a in b.parents else 'contains'} the "
                          f"input folder {src}; ferlab align never writes there: choose another output folder")
    return src, out


def _prepare_output(out: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> set[str]:
    """Make the output folder ready; returns the sources already finished (resume). Refuses, in one line, an existing
    output without resume/overwrite, a resume with other settings, and overwriting a folder ferlab align did not write."""
    manifest = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise FerlabError(f"output {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return set()
    ours = manifest.is_file()
    if overwrite:
        if not ours:
            raise FerlabError(f"output {out} is not empty and was not written by ferlab align (no {MANIFEST}); "
                              "refusing to replace it: choose another output folder")
        shutil.rmtree(out)
        return set()
    if not resume:
        raise FerlabError(f"output {out} already exists; resume=true finishes an interrupted run, overwrite=true "
                          "replaces it")
    if not ours:
        raise FerlabError(f"resume=true: {out} has no {MANIFEST}; it is not a ferlab align output")
    before = json.loads(manifest.read_text()).get("settings")
    if before != settings:
        raise FerlabError(f"resume=true: {out} was aligned with other settings ({before}); overwrite=true redoes it")
    journal = out / JOURNAL
    lines = journal.read_text().splitlines() if journal.is_file() else []
    return {json.loads(line)["file"] for line in lines if line.strip().endswith("}")}


def _items(cfg: DictConfig, src: Path) -> tuple[list[Any], list[str]]:
    """(what to align, files ignored as not images): a folder walk, or a dataset's landmark lists."""
    from ferlab.data.sources.folders import list_images
    from ferlab.infer.landmarks import FORMATS, LISTERS
    from ferlab.infer.prepare import Item

    if cfg.landmarks not in FORMATS:
        raise FerlabError(f"landmarks: expected one of {', '.join(FORMATS)}, got {cfg.landmarks!r}")
    if cfg.landmarks != "detect":
        return LISTERS[cfg.landmarks](src), []
    images, _ = list_images(src)
    ignored = sorted({str(p) for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")}
                     - {str(p) for p in images})
    if not images:
        raise FerlabError(f"no images in {src} (or its subfolders)")
    return [Item(p, p.relative_to(src)) for p in images], ignored


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """The settings that decide the crops (a resumed run must have the same)."""
    from ferlab.infer.prepare import FACES

    if cfg.faces not in FACES:
        raise FerlabError(f"faces: expected largest or all, got {cfg.faces!r}")
    if int(cfg.size) < 8:
        raise FerlabError(f"size: expected the side of the aligned crops in pixels (>= 8), got {cfg.size}")
    detector = OmegaConf.to_container(cfg.detector, resolve=True) if cfg.landmarks == "detect" else None
    return {"size": int(cfg.size), "faces": str(cfg.faces), "landmarks": str(cfg.landmarks),
            "template": "arcface", "align_margin": float(cfg.detector.get("align_margin", 0.0)),
            "detector": detector}


def face_of(cfg: DictConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """The `face` record a model trained on this output carries."""
    from hydra.utils import instantiate

    from ferlab.infer.preprocessing import describe, face_record

    if cfg.landmarks == "detect":
        detector = instantiate({**settings["detector"], "align": True})
        if not getattr(detector, "has_landmarks", False):
            raise FerlabError(f"ferlab align needs a detector with landmarks; detector={detector.name} has none "
                              "(use detector=mtcnn)")
        return {**describe(detector), "source": "ferlab align"}
    return face_record(None, align=True, align_margin=settings["align_margin"],
                       source=f"ferlab align landmarks={cfg.landmarks}")


def _write_manifest(out: Path, cfg: DictConfig, settings: dict, face: dict, counts: dict | None) -> None:
    from ferlab.runs.runfiles import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, {"tool": "ferlab align", "input": str(cfg.input), "settings": settings, "face": face,
                                "complete": counts is not None, "counts": counts or {}})


def run_align(cfg: DictConfig) -> dict[str, Any]:
    """Align every photo of `cfg.input` into `cfg.output`; write the manifest and report; return the report."""
    from ferlab.infer.prepare import Settings

    src, out = _folders(cfg)
    workers = int(cfg.workers)
    if workers < 1:
        raise FerlabError(f"workers: expected a number of processes >= 1, got {cfg.workers}")
    settings = settings_of(cfg)
    face = face_of(cfg, settings)
    items, ignored = _items(cfg, src)
    done = _prepare_output(out, settings, bool(cfg.resume), bool(cfg.overwrite))
    _write_manifest(out, cfg, settings, face, None)
    todo = [item for item in items if str(item.src) not in done]
    detector = {**settings["detector"], "align": True} if settings["detector"] else None
    run = Settings(out, settings["size"], settings["align_margin"], settings["faces"], detector)
    _align_all(todo, run, workers, out / JOURNAL, bool(cfg.progress))
    entries = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines() if line.strip()]
    report = build_report(entries, ignored, len(items) - len(todo))
    _write_manifest(out, cfg, settings, face, report["counts"])
    _write_report(out, report)
    print_report(report, out)
    return {**report, "output": str(out)}


def _align_all(items: list[Any], settings: Any, workers: int, journal: Path, progress: bool) -> None:
    """Align `items` in `workers` processes (this one when 1); each finished photo is appended to the journal."""
    import multiprocessing

    from rich.progress import Progress

    from ferlab.infer.prepare import align_item, init_worker

    with journal.open("a", encoding="utf-8") as log_file, Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("aligning", total=len(items))

        def record(entry: dict) -> None:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            bar.advance(task)

        if workers == 1 or len(items) < 2:
            init_worker(settings)
            for item in items:
                record(align_item(item))
            return
        with multiprocessing.get_context("spawn").Pool(workers, init_worker, (settings,)) as pool:
            for entry in pool.imap_unordered(align_item, items, chunksize=max(1, min(16, len(items) // (4 * workers)))):
                record(entry)


def build_report(entries: list[dict], ignored: list[str], resumed: int) -> dict[str, Any]:
    """Counts and the lists of photos without a face, with several faces and unreadable files."""
    no_face = sorted(e["file"] for e in entries if e["status"] == "no_face")
    several = sorted(({"file": e["file"], "faces": e["faces"]} for e in entries if e["faces"] > 1),
                     key=lambda e: e["file"])
    unreadable = sorted(({"file": e["file"], "reason": e["reason"]} for e in entries if e["status"] == "unreadable"),
                        key=lambda e: e["file"])
    crops = sum(len(e["written"]) for e in entries)
    counts = {"photos": len(entries), "aligned": sum(e["status"] == "ok" for e in entries), "crops": crops,
              "no_face": len(no_face), "several_faces": len(several), "unreadable": len(unreadable),
              "ignored": len(ignored), "skipped_as_done": resumed}
    return {"counts": counts, "no_face": no_face, "several_faces": several, "unreadable": unreadable,
            "ignored": ignored}


def _write_report(out: Path, report: dict[str, Any]) -> None:
    from ferlab.runs.io import atomic_write_text
    from ferlab.runs.runfiles import write_json

    write_json(out / REPORTS[0], report)
    lines = ["# ferlab align report", "", "| | count |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in report["counts"].items()]
    for title, key in (("No face found", "no_face"), ("Several faces", "several_faces"), ("Unreadable", "unreadable")):
        if report[key]:
            lines += ["", f"## {title}", ""]
            lines += [f"- {e if isinstance(e, str) else e['file']}"
                      + (f" ({e['faces']} faces)" if isinstance(e, dict) and "faces" in e else "")
                      + (f": {e['reason']}" if isinstance(e, dict) and "reason" in e else "") for e in report[key]]
    atomic_write_text(out / REPORTS[1], "\n".join(lines) + "\n")


def print_report(report: dict[str, Any], out: Path) -> None:
    """One summary line per kind of outcome, and where the crops and the report are."""
    c = report["counts"]
    print(f"{c['photos']} photo(s): {c['aligned']} aligned ({c['crops']} crops), {c['no_face']} without a face, "
          f"{c['several_faces']} with several faces, {c['unreadable']} unreadable"
          + (f", {c['skipped_as_done']} done before (resumed)" if c["skipped_as_done"] else ""))
    for key, what in (("no_face", "no face"), ("unreadable", "unreadable")):
        if report[key]:
            first = [e if isinstance(e, str) else e["file"] for e in report[key][:3]]
            print(f"{what}: {', '.join(first)}{' ...' if len(report[key]) > 3 else ''}")
    print(f"aligned faces: {out} (report: {out / REPORTS[1]})")


main = hydra_task("align")(run_align)

if __name__ == "__main__":
    main()
