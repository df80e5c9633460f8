"""`ferlab report --plot`: per-epoch curves of every configuration and a bar chart of the sorted metric."""

from __future__ import annotations

from pathlib import Path

from ferlab.report import Report, Row, config_label


def _label(row: Row) -> str:
    return config_label(row.config)


def _curve(row: Row, metric: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over the row's runs of `metric` in metrics.json's per-epoch history."""
    import numpy as np

    by_epoch: dict[int, list[float]] = {}
    for run in row.runs:
        for rec in run.history:
            if metric in rec and "epoch" in rec:
                by_epoch.setdefault(int(rec["epoch"]), []).append(float(rec[metric]))
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs], [float(np.std(by_epoch[e])) for e in epochs]


def _file_name(metric: str, kind: str) -> str:
    return f"{metric.replace('/', '_')}_{kind}.png"


def plot_curves(report: Report, metric: str, out_dir: Path) -> Path | None:
    """One line per configuration (mean over seeds, band = ±1 std); None when no run has the metric."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for row in report.rows:
        epochs, mean, std = _curve(row, metric)
        if not epochs:
            continue
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{_label(row)} (n={len(row.runs)})")
        if len(row.runs) > 1:
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return _save(fig, out_dir / _file_name(metric, "curves"))


def plot_bars(report: Report, metric: str, out_dir: Path) -> Path | None:
    """The final `metric` per configuration, in table order, error bars = ±1 std over seeds."""
    import matplotlib.pyplot as plt

    stats = [(row, *row.stat(metric)) for row in report.rows]
    stats = [(row, mean, std or 0.0) for row, mean, std, _ in stats if mean is not None]
    if not stats:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(stats) + 2), 5))
    xs = range(len(stats))
    ax.bar(xs, [m for _, m, _ in stats], yerr=[s for _, _, s in stats], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(list(xs), [_label(row) for row, _, _ in stats], rotation=30, ha="right", fontsize="small")
    ax.set(ylabel=metric, title=f"{metric} per configuration (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir / _file_name(metric, "bars"))


def _save(fig, path: Path) -> Path:
    """Write the figure atomically and close it."""
    import matplotlib.pyplot as plt

    from ferlab.data.io import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_report(report: Report, out_dir: Path, curve_metric: str = "val/acc") -> list[Path]:
    """Both figures into `out_dir`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    paths = [plot_curves(report, curve_metric, out_dir)]
    if report.sort:
        paths.append(plot_bars(report, report.sort, out_dir))
    return [p for p in paths if p is not None]
