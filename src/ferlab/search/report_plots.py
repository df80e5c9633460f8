"""`ferlab report --plot`: per-epoch curves of every configuration and a bar chart of the sorted metric.

The figures take plain rows (`PlotRow`), so this module knows nothing of how `ferlab.search.report` finds runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class PlotRow:
    """One configuration of the table as the figures need it.

    label: its swept values ("k=v k=v"); histories: metrics.json's per-epoch history of each of its runs;
    final: (mean, std or None) of the bar chart's metric over its runs, (None, None) when none has it.
    """

    label: str
    histories: list[list[dict]]
    final: tuple[float | None, float | None] = (None, None)


def _curve(row: PlotRow, metric: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over the row's runs of `metric` in metrics.json's per-epoch history."""
    import numpy as np

    by_epoch: dict[int, list[float]] = {}
    for history in row.histories:
        for rec in history:
            if metric in rec and "epoch" in rec:
                by_epoch.setdefault(int(rec["epoch"]), []).append(float(rec[metric]))
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs], [float(np.std(by_epoch[e])) for e in epochs]


def _file_name(metric: str, kind: str) -> str:
    return f"{metric.replace('/', '_')}_{kind}.png"


def plot_curves(rows: list[PlotRow], metric: str, out_dir: Path) -> Path | None:
    """One line per configuration (mean over seeds, band = ±1 std); None when no run has the metric."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for row in rows:
        epochs, mean, std = _curve(row, metric)
        if not epochs:
            continue
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{row.label} (n={len(row.histories)})")
        if len(row.histories) > 1:
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


def plot_bars(rows: list[PlotRow], metric: str, out_dir: Path) -> Path | None:
    """The final `metric` (each row's `final`) per configuration, in table order, error bars = ±1 std over seeds."""
    import matplotlib.pyplot as plt

    stats = [(row, mean, std or 0.0) for row in rows for mean, std in [row.final] if mean is not None]
    if not stats:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(stats) + 2), 5))
    xs = range(len(stats))
    ax.bar(xs, [m for _, m, _ in stats], yerr=[s for _, _, s in stats], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(list(xs), [row.label for row, _, _ in stats], rotation=30, ha="right", fontsize="small")
    ax.set(ylabel=metric, title=f"{metric} per configuration (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir / _file_name(metric, "bars"))


def _save(fig, path: Path) -> Path:
    """Write the figure atomically and close it."""
    import matplotlib.pyplot as plt

    from ferlab.runs.io import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_rows(rows: list[PlotRow], out_dir: Path, curve_metric: str = "val/acc",
                bar_metric: str | None = None) -> list[Path]:
    """The curves of `curve_metric`, and the bars of `bar_metric` when given, into `out_dir`; the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    paths = [plot_curves(rows, curve_metric, out_dir)]
    if bar_metric:
        paths.append(plot_bars(rows, bar_metric, out_dir))
    return [p for p in paths if p is not None]
