"""What a run prints before its first epoch: the model summary, and none of Lightning's unrelated chatter.

Lightning's summary has a FLOPs column that is 0 for every module unless the LightningModule carries an
`example_input_array`, which it would run through the batch-transfer hooks (ferlab's augmentation) at start-up;
ferlab drops the column instead. Lightning also advertises its cloud logger on every run, and reports absent
TPUs and HPUs; those lines are filtered out of its log.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary import get_formatted_model_size, get_human_readable_count

# Lightning's start-up lines that are not about this run
CHATTER = re.compile(r"💡 Tip:|(TPU|HPU) available: False")


class ModelSummary(RichModelSummary):
    """Lightning's rich model summary (name, type, parameters, mode per module) without the FLOPs column."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int = 0,
                  **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            left = name in ("Name", "Type", "Mode")
            table.add_column(name, justify="left" if left else "right", style="dim" if name == " " else None,
                             no_wrap=name == "Name")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        grid = Table.grid(expand=True)
        trainable = get_human_readable_count(int(trainable_parameters))
        for label, value in (
            ("Trainable params", trainable),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", total_training_modes["train"]),
            ("Modules in eval mode", total_training_modes["eval"]),
        ):
            grid.add_row(f"[bold]{label}[/]: {value}")
        console = get_console()
        console.print(table)
        console.print(grid)


class _Chatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not CHATTER.match(record.getMessage())


def quiet_lightning() -> None:
    """Filter Lightning's advertisement and absent-accelerator lines out of its log and its pytree deprecation
    warning (once per process: the main one and each spawned DDP worker)."""
    # Lightning 2.6 on torch 2.14 warns about its own pytree use on every step; nothing users can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _Chatter) for f in logger.filters):
        logger.addFilter(_Chatter())
