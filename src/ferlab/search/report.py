"""`ferlab report <dir>...`: one ablation table from the runs of one or more run or sweep directories.

Each run contributes its overrides (`.hydra/overrides.yaml`) and metrics (`metrics.json`). Overrides that
differ between runs become columns; runs that differ only in `seed` form one row with mean ± std (sample
standard deviation, n - 1) and n. Validation metrics are those of the best epoch (the checkpoint that was
tested); test metrics are the test run of that checkpoint. Failed runs (`failed.json`) are listed with their
error, runs an Optuna pruner stopped as pruned. `--study STORAGE NAME` tables an Optuna study instead (all its
workers' trials; `ferlab.search.study_report`). Light on purpose: no torch import.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferlab.errors import FerlabError
from ferlab.runs.runfiles import STOPPED, headline_metrics

SKIP_DIRS = {"checkpoints", "tensorboard", ".submitit", "csv", "eval", "__pycache__"}
METRIC_ORDER = {"acc": 0, "f1_macro": 1, "ccc_mean": 2, "loss": 3}
FORMATS = ("markdown", "csv", "json")


@dataclass
class Run:
    """One run directory: what it was asked to do, and what came of it."""

    path: Path
    overrides: dict[str, str]
    status: str  # ok | failed | incomplete | pruned
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    error: str = ""
    error_type: str = ""  # failed.json's exception type, e.g. FerlabError, DataNotFound
    monitor: str | None = None
    mode: str | None = None


@dataclass
class Row:
    """One configuration: its swept values and the runs (seeds) behind it."""

    config: dict[str, str | None]  # None: the override was not given (the config's default)
    runs: list[Run]

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def stat(self, metric: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std or None when n < 2, n) of `metric` over the row's runs."""
        values = self.values(metric)
        if not values:
            return None, None, 0
        std = statistics.stdev(values) if len(values) > 1 else None
        return statistics.fmean(values), std, len(values)


@dataclass
class Report:
    """The table: rows sorted by `sort`, the swept and the common overrides, failed and unfinished runs."""

    dirs: list[Path]
    rows: list[Row]
    swept: list[str]
    common: dict[str, str]
    metrics: list[str]
    sort: str | None
    descending: bool
    failed: list[Run]
    incomplete: list[Run]
    pruned: list[Run] = field(default_factory=list)


def _number(value: Any) -> float | None:
    """A metric value; metrics.json writes NaN and infinities as strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return None


def parse_overrides(items: list[str]) -> dict[str, str]:
    """["model=vgg_fer", "+x=1"] -> {"model": "vgg_fer", "x": "1"}; deletions (~key) are kept as key: "~"."""
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        if key.startswith("~"):
            out[key[1:]] = "~"
        else:
            out[key.lstrip("+")] = value
    return out


def _flat_metrics(data: dict) -> dict[str, float]:
    """Best-epoch val/* (the tested checkpoint), test metrics without per-class F1, and run bookkeeping."""
    picked = headline_metrics(data)
    picked.update({k: data.get(k) for k in ("epochs", "wall_time_s")})
    return {k: _number(v) for k, v in picked.items() if _number(v) is not None}


def load_run(path: Path) -> Run:
    """Read one run directory; an unreadable metrics.json makes it `incomplete` with the reason."""
    import yaml

    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.exists() else {}
    failed = path / "failed.json"
    if failed.exists():
        try:
            info = json.loads(failed.read_text())
            error = f"{info.get('type', 'Error')}: {info.get('message', '')}"
        except (OSError, ValueError) as e:
            info, error = {}, f"unreadable failed.json ({e})"
        if info.get("type") in STOPPED:  # stopped by a signal, or never started: unfinished, not failed
            return Run(path, overrides, "incomplete", error=str(info.get("message", "")))
        return Run(path, overrides, "failed", error=error, error_type=str(info.get("type", "")))
    metrics_file = path / "metrics.json"
    if not metrics_file.exists():
        return Run(path, overrides, "incomplete", error="no metrics.json (still running, or killed)")
    try:
        data = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as e:
        return Run(path, overrides, "incomplete", error=f"unreadable metrics.json ({e})")
    best = data.get("best") or {}
    if data.get("pruned"):  # an Optuna trial the pruner stopped: partial training, not a result to rank
        cut = data["pruned"]
        return Run(path, overrides, "pruned", _flat_metrics(data), list(data.get("history") or []),
                   error=f"pruned at epoch {cut.get('epoch')} ({best.get('monitor')} {cut.get('value')})")
    return Run(path, overrides, "ok", _flat_metrics(data), list(data.get("history") or []),
               monitor=best.get("monitor"), mode=best.get("mode"))


def _is_run(path: Path, names: set[str]) -> bool:
    return "metrics.json" in names or "failed.json" in names or (path / ".hydra" / "overrides.yaml").is_file()


def _is_training(path: Path) -> bool:
    """Train runs only: eval, explain, predict and export runs (no `trainer` in their config) are not rows."""
    import yaml

    config = path / ".hydra" / "config.yaml"
    if (path / "metrics.json").exists() or not config.is_file():
        return True
    try:
        return "trainer" in (yaml.safe_load(config.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return True


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run directory at or below `dirs` (a run dir, a sweep dir, or a folder of either), in path order."""
    found: dict[Path, None] = {}
    for top in dirs:
        if not top.is_dir():
            raise FerlabError(f"no such directory: {top}")
        for root, subdirs, files in os.walk(top):
            here = Path(root)
            subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS and d != ".hydra")
            if _is_run(here, set(files)):
                if _is_training(here):
                    found[here.resolve()] = None
                subdirs[:] = []  # checkpoints, tensorboard and such; no runs inside a run
    return [load_run(p) for p in found]


def _metric_key(name: str) -> tuple:
    split, _, metric = name.partition("/")
    split_rank = 0 if split == "val" else 1 if split == "test" else 2
    return split_rank, split, METRIC_ORDER.get(metric, len(METRIC_ORDER)), metric


def _descending(metric: str, runs: list[Run]) -> bool:
    """Higher is better unless the runs' monitor says min for it, or it is a loss, an error (RMSE) or a time."""
    modes = {r.mode for r in runs if r.monitor == metric and r.mode}
    if modes:
        return modes != {"min"}
    return not (metric.endswith("loss") or metric.endswith("_s") or metric.partition("/")[2].startswith("rmse"))


def build_report(
    runs: list[Run], dirs: list[Path], metrics: list[str] | None = None, sort: str | None = None
) -> Report:
    """Group the runs into rows (all overrides but seed equal), pick the metric columns, sort."""
    if not runs:
        raise FerlabError(f"no runs under {', '.join(map(str, dirs))} (no metrics.json or failed.json)")
    keys = sorted({k for r in runs for k in r.overrides})
    swept = [k for k in keys if len({r.overrides.get(k, "") for r in runs}) > 1]
    common = {k: runs[0].overrides[k] for k in keys if k not in swept}
    group_keys = [k for k in swept if k != "seed"]
    ok = [r for r in runs if r.status == "ok"]
    available = sorted({m for r in ok for m in r.metrics}, key=_metric_key)
    for name in (metrics or []) + ([sort] if sort else []):
        if ok and name not in available:
            raise FerlabError(f"metric {name!r} is in no run; available: {', '.join(available)}")
    groups: dict[tuple, list[Run]] = {}
    for r in ok:
        groups.setdefault(tuple(r.overrides.get(k) for k in group_keys), []).append(r)
    rows = [Row(dict(zip(group_keys, key, strict=True)), members) for key, members in groups.items()]
    sort = sort or next((r.monitor for r in ok if r.monitor in available), available[0] if available else None)
    descending = _descending(sort, ok) if sort else True
    if sort:
        def order(row: Row) -> tuple:
            mean = row.stat(sort)[0]
            missing = mean is None or math.isnan(mean)
            return missing, 0.0 if missing else (-mean if descending else mean)

        rows.sort(key=order)
    failed = [r for r in runs if r.status == "failed"]
    incomplete = [r for r in runs if r.status == "incomplete"]
    pruned = [r for r in runs if r.status == "pruned"]
    columns = list(metrics or [m for m in available if "/" in m])
    return Report(dirs, rows, swept, common, columns, sort, descending, failed, incomplete, pruned)


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _label(run: Run, report: Report) -> str:
    """A run's path relative to the directory given, for the failure list."""
    for top in report.dirs:
        try:
            return str(run.path.relative_to(top.resolve())) or "."
        except ValueError:
            continue
    return str(run.path)


def _cell(value: str | None) -> str:
    return "(default)" if value is None else value


def config_label(config: dict[str, str | None]) -> str:
    """"k=v k=v" of a row's swept values, for lists and plot labels."""
    return " ".join(f"{k}={_cell(v)}" for k, v in config.items()) or "(all runs)"


def to_markdown(report: Report) -> str:
    """The table as the reports print theirs, then the failed and unfinished runs."""
    n_runs = sum(len(r.runs) for r in report.rows)
    pruned = f", {len(report.pruned)} pruned" if report.pruned else ""
    head = [f"## ferlab report: {n_runs} finished, {len(report.failed)} failed, {len(report.incomplete)} unfinished"
            f"{pruned}",
            "", f"Runs under: {', '.join(f'`{d}`' for d in report.dirs)}"]
    if report.common:
        head.append("Common overrides: " + " ".join(f"`{k}={v}`" for k, v in report.common.items()))
    if report.sort:
        head.append(f"Sorted by {report.sort} ({'highest' if report.descending else 'lowest'} first); "
                    "val/* at the best epoch, test/* of that checkpoint; mean ± std over seeds.")
    config_keys = [k for k in report.swept if k != "seed"]
    cols = [*config_keys, "n", *report.metrics]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in report.rows:
        cells = [_cell(row.config.get(k)) for k in config_keys] + [str(len(row.runs))]
        cells += [_fmt(*row.stat(m)[:2]) for m in report.metrics]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out = [*head, "", *lines] if report.rows else [*head, "", "No run finished."]
    for title, runs in (("Failed runs", report.failed), ("Unfinished runs", report.incomplete),
                        ("Pruned runs", report.pruned)):
        if runs:
            out += ["", f"### {title}", ""]
            out += [f"- `{_label(r, report)}` ({config_label({k: r.overrides.get(k) for k in report.swept})}): "
                    f"{r.error}" for r in runs]  # seed included: it tells a sweep's unfinished jobs apart
    return "\n".join(out) + "\n"


def to_csv(report: Report) -> str:
    """One line per configuration (mean and std columns), then one per failed or unfinished run."""
    config_keys = [k for k in report.swept if k != "seed"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*config_keys, "status", "n", *(f"{m}{s}" for m in report.metrics for s in ("", "_std")), "error"])
    for row in report.rows:
        stats = [row.stat(m) for m in report.metrics]
        cells = [v for mean, std, _ in stats for v in (mean, std)]
        writer.writerow([*(row.config.get(k) or "" for k in config_keys), "ok", len(row.runs),
                         *("" if v is None else repr(v) for v in cells), ""])
    for run in report.failed + report.incomplete + report.pruned:
        writer.writerow([*(run.overrides.get(k, "") for k in config_keys), run.status, 0,
                         *([""] * (2 * len(report.metrics))), run.error])
    return buf.getvalue()


def to_json(report: Report) -> str:
    """Everything, unrounded: rows with per-run values, and the failed and unfinished runs."""
    def run_info(r: Run) -> dict:
        return {"run": str(r.path), "overrides": r.overrides, "status": r.status, "error": r.error or None}

    rows = []
    for row in report.rows:
        metrics = {}
        for m in report.metrics:
            mean, std, n = row.stat(m)
            metrics[m] = {"mean": mean, "std": std, "n": n, "values": row.values(m)}
        rows.append({"config": row.config, "n": len(row.runs), "metrics": metrics,
                     "runs": [str(r.path) for r in row.runs], "seeds": [r.overrides.get("seed") for r in row.runs]})
    data = {"dirs": [str(d) for d in report.dirs], "swept": report.swept, "common": report.common,
            "sort": report.sort, "descending": report.descending, "rows": rows,
            "failed": [run_info(r) for r in report.failed], "incomplete": [run_info(r) for r in report.incomplete],
            "pruned": [run_info(r) for r in report.pruned]}
    return json.dumps(data, indent=2, default=str) + "\n"


RENDER = {"markdown": to_markdown, "csv": to_csv, "json": to_json}


def write_report(report: Report, out_dir: Path, fmt: str = "markdown") -> list[Path]:
    """report.md (always) and report.<csv|json> when asked for that format, written atomically."""
    from ferlab.runs.io import atomic_write_text

    paths = [atomic_write_text(out_dir / "report.md", to_markdown(report))]
    if fmt != "markdown":
        paths.append(atomic_write_text(out_dir / f"report.{fmt}", RENDER[fmt](report)))
    return paths


def plot_report(report: Report, out_dir: Path, curve_metric: str) -> list[Path]:
    """`--plot`: per-epoch curves of `curve_metric` and bars of the sorted metric, one entry per table row."""
    from ferlab.search.report_plots import PlotRow, plot_rows

    rows = [PlotRow(config_label(row.config), [run.history for run in row.runs],
                    row.stat(report.sort)[:2] if report.sort else (None, None)) for row in report.rows]
    return plot_rows(rows, out_dir, curve_metric, report.sort)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferlab report", description=__doc__.split("\n")[0].split(": ", 1)[1])
    p.add_argument("dirs", nargs="*", type=Path, help="run dirs, sweep (multirun) dirs, or folders holding them")
    p.add_argument("--study", nargs=2, metavar=("STORAGE", "NAME"),
                   help="instead of dirs: every trial of an Optuna study (all workers), sorted by the objective, "
                        "and the parameter importances; e.g. --study sqlite:///outputs/optuna/train_synthetic.db "
                        "train_synthetic")
    p.add_argument("--format", choices=FORMATS, default="markdown", help="what to print (default markdown)")
    p.add_argument("--sort", help="metric to sort by (default: the runs' monitor, e.g. val/acc)")
    p.add_argument("--metrics", nargs="+", help="metric columns (default: every val/* and test*/* metric)")
    p.add_argument("--plot", action="store_true", help="also write <metric>_curves.png and <metric>_bars.png")
    p.add_argument("--curve", default="val/acc", help="metric of the per-epoch curves (default val/acc)")
    p.add_argument("--out", type=Path, help="where report.md and plots go (default: the one dir given)")
    p.add_argument("--no-write", action="store_true", help="print only; write no files")
    return p


def run_report(args: argparse.Namespace) -> tuple[str, list[Path]]:
    """Build the report; write report.md (and plots) into the output dir. Returns the text and written files."""
    report = build_report(find_runs(args.dirs), args.dirs, args.metrics, args.sort)
    out_dir = args.out or (args.dirs[0] if len(args.dirs) == 1 else None)
    written: list[Path] = []
    if out_dir is not None and not args.no_write:
        written += write_report(report, out_dir, args.format)
        if args.plot:
            written += plot_report(report, out_dir, args.curve)
    elif args.plot or (out_dir is None and not args.no_write):
        print("ferlab report: several dirs and no --out: nothing written", file=sys.stderr)
    return RENDER[args.format](report), written


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.dirs) == bool(args.study):
        parser.error("give run or sweep dirs, or --study STORAGE NAME")
    try:
        if args.study:
            from ferlab.search.study_report import run_study_report

            text, written = run_study_report(args)
        else:
            text, written = run_report(args)
    except FerlabError as e:
        print(f"ferlab: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(text)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
