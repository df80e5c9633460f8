"""Matplotlib figures for reports and explanations, saved atomically as PNG and rendered for TensorBoard.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no display backend, nothing global).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ferlab.runs.io import atomic_write


def new_figure(width: float, height: float, constrained: bool = True) -> Any:
    """A Figure with an Agg canvas, of `width` x `height` inches (constrained layout: slower, for few axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def figure_array(fig: Any) -> np.ndarray:
    """The rendered figure as uint8 (H, W, 3), for a PNG and TensorBoard's add_image(dataformats="HWC")."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(image: np.ndarray, path: Path) -> Path:
    """uint8 (H, W, 3) as a PNG, written atomically."""
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def to_display(image: Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) gray or (H, W, 3) RGB numpy for imshow."""
    array = image.detach().float().clamp(0, 1).cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def confusion_axes(ax: Any, matrix: np.ndarray, class_names: Sequence[str], title: str, fmt: str,
                   vmax: float | None = None) -> None:
    """One confusion matrix: true classes as rows, predictions as columns, every cell annotated."""
    k = len(class_names)
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax or max(float(matrix.max()), 1e-9))
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    threshold = (vmax or matrix.max()) / 2
    for i in range(k):
        for j in range(k):
            ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")


def confusion_figure(reports: dict[str, dict], class_names: Sequence[str]) -> Any:
    """Per split (rows): the confusion matrix in counts and row-normalized (columns)."""
    k = len(class_names)
    side = 2.2 + 0.45 * k
    fig = new_figure(2 * side, side * len(reports))
    axes = fig.subplots(len(reports), 2, squeeze=False)
    for row, (prefix, report) in enumerate(reports.items()):
        counts = np.asarray(report["confusion_matrix"])
        confusion_axes(axes[row, 0], counts, class_names, f"{prefix}: counts (n={counts.sum()})", "d")
        confusion_axes(axes[row, 1], np.asarray(report["confusion_matrix_normalized"]), class_names,
                       f"{prefix}: row-normalized (recall on the diagonal)", ".2f", vmax=1.0)
    return fig


@dataclass
class Cell:
    """One panel of a grid: an image (C, H, W) in [0, 1] or a map (H, W) in [0, 1] shown with `cmap`,
    optionally with a map `overlay` (H, W) in [0, 1] drawn half-transparent on top."""

    image: Tensor
    title: str = ""
    overlay: Tensor | None = None
    cmap: str = "jet"


def _draw(ax: Any, cell: Cell) -> None:
    if cell.image.ndim == 2:
        ax.imshow(cell.image.detach().cpu().numpy(), cmap=cell.cmap, vmin=0, vmax=1)
    else:
        shown = to_display(cell.image)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
    if cell.overlay is not None:
        ax.imshow(cell.overlay.detach().cpu().numpy(), cmap=cell.cmap, alpha=0.5, vmin=0, vmax=1)
    ax.set_title(cell.title, fontsize=7)


def image_grid(cells: Sequence[Cell], ncols: int, suptitle: str = "") -> Any:
    """Panels in a grid of `ncols` columns, row by row; `None` cells are left blank (e.g. a class with few images)."""
    n = len(cells)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    top = 0.45 if suptitle else 0.1  # inches above the first row
    fig = new_figure(1.5 * ncols, 1.7 * nrows + top, constrained=False)  # many axes: a fixed layout is much faster
    height = 1.7 * nrows + top
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - top / height, wspace=0.05, hspace=0.25)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, cell in zip(axes.flat, [*cells, *[None] * (nrows * ncols - n)], strict=True):
        ax.set_axis_off()
        if cell is not None:
            _draw(ax, cell)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9, y=1 - 0.08 / height, va="top")
    return fig
