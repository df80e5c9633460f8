"""Speed options that are not Trainer arguments. Add with `+callbacks.channels_last._target_=ferlab.lit.speed.ChannelsLast`."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class ChannelsLast(Callback):
    """Stores the network's 4-D weights channels-last (NHWC) from the start of fit/test/predict.

    Convolutions then run NHWC (inputs are converted by the first convolution). It pays off mostly together with
    `trainer.precision=bf16-mixed` on CPUs with AVX-512-BF16/AMX and with 16-bit precision on GPU tensor cores;
    `benchmarks/overhead.py` measures it on the machine at hand.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
