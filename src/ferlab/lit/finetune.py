"""Fine-tuning controls: the head and the backbone as two optimizer parameter groups, and Lightning's
BackboneFinetuning (freeze the backbone for N epochs, then train it at a lower learning rate) on ferlab's Classifier.

The backbone is every parameter of the network outside `net.head` (the FERNet surface) and outside the modules
that `model.pretrained` / `init_from` initialised anew (`fresh`: a stem or hidden layers of another shape); the
head is the rest: it learns at the optimizer's rate from the first step.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BackboneFinetuning as LightningBackboneFinetuning
from torch import nn

from ferlab.errors import FerlabError

log = logging.getLogger(__name__)
HEAD, BACKBONE = "head", "backbone"


def in_backbone(child: str, fresh: Collection[str] = ()) -> bool:
    """Whether the network's top-level module `child` is part of the backbone (`Classifier.backbone`)."""
    return child != "head" and child not in fresh


def is_backbone(name: str, fresh: Collection[str] = ()) -> bool:
    """Whether a LightningModule parameter name (`net.<child>.…`) belongs to the backbone."""
    parts = name.split(".")
    return len(parts) > 2 and parts[0] == "net" and in_backbone(parts[1], fresh)


def optimizer_factory(optim: Any) -> tuple[Callable[..., torch.optim.Optimizer], float]:
    """The `optim` config's optimizer partial and its `backbone_lr_mult` (ferlab's key, not the optimizer's)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(optim, resolve=True) if OmegaConf.is_config(optim) else dict(optim)
    backbone_lr_mult = float(node.pop("backbone_lr_mult", 1.0))
    return instantiate(node), backbone_lr_mult


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], module: nn.Module, backbone_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """`factory(params=...)` over `module`'s parameters, as one group or as the groups "head" and "backbone"
    (`module.backbone`'s parameters, e.g. `Classifier.backbone`; the head: all others).

    Two groups when the backbone learns at its own rate (`backbone_lr_mult` != 1) or some of it is frozen now
    (BackboneFinetuning unfreezes it later): the backbone's rate is the head's times `backbone_lr_mult`, and the
    groups' names become the LearningRateMonitor's `lr-<optimizer>/head` and `lr-<optimizer>/backbone`.
    Frozen parameters are in the optimizer from the start (without gradients they are not stepped), so unfreezing
    changes neither the groups nor what a scheduler or a resumed optimizer state expects.
    """
    params = list(module.parameters())
    in_backbone_ids = {id(p) for p in module.backbone.parameters()}
    backbone = [p for p in params if id(p) in in_backbone_ids]
    if backbone_lr_mult == 1.0 and all(p.requires_grad for p in backbone):
        return factory(params=params)
    head = [p for p in params if id(p) not in in_backbone_ids]
    optimizer = factory(params=[{"params": head, "name": HEAD}, {"params": backbone, "name": BACKBONE}])
    optimizer.param_groups[1]["lr"] *= backbone_lr_mult  # before any scheduler records its initial_lr
    return optimizer


def _constant(epoch: int, factor: float) -> float:
    return factor


class BackboneFinetuning(LightningBackboneFinetuning):
    """Lightning's BackboneFinetuning for ferlab: the backbone is frozen until `unfreeze_backbone_at_epoch`,
    then trains in the optimizer's "backbone" group at `backbone_initial_ratio_lr` x the head's learning rate
    (or `backbone_initial_lr`), multiplied by `backbone_lr_growth` every epoch until it reaches the head's, which it
    then follows (`should_align`). Batch norm layers keep training while frozen when `train_bn` is true.

    Differences from Lightning's: the backbone group exists from the start (`build_optimizer`), so schedulers and
    resumed optimizer states see the same groups throughout; `train_bn` applies to the frozen phase too; a run
    resumed after the unfreezing epoch trains its backbone again; the growth factor is a number (YAML), not a lambda.
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        backbone_lr_growth: float = 1.5,
        backbone_initial_ratio_lr: float = 0.1,
        backbone_initial_lr: float | None = None,
        should_align: bool = True,
        train_bn: bool = True,
        verbose: bool = False,
    ) -> None:
        if unfreeze_backbone_at_epoch < 0 or backbone_lr_growth <= 0 or backbone_initial_ratio_lr <= 0:
            raise FerlabError("callbacks.backbone_finetuning: unfreeze_backbone_at_epoch >= 0, backbone_lr_growth > 0 and "
                             "backbone_initial_ratio_lr > 0 expected")
        super().__init__(
            unfreeze_backbone_at_epoch=unfreeze_backbone_at_epoch,
            lambda_func=functools.partial(_constant, factor=backbone_lr_growth),
            backbone_initial_ratio_lr=backbone_initial_ratio_lr,
            backbone_initial_lr=backbone_initial_lr,
            should_align=should_align,
            train_bn=train_bn,
            verbose=verbose,
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No param-group surgery on a resume: ferlab's groups never change, and the restored optimizer state holds
        their learning rates (Lightning would put back those of the first epoch's start)."""
        self._restarting = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A run resumed past the unfreezing epoch trains its backbone again (setup froze it), also mid-epoch,
        where no epoch start comes to do it. Here, not in on_fit_start: the loops' state is restored in between."""
        if trainer.current_epoch >= self.unfreeze_backbone_at_epoch:
            self.make_trainable(pl_module.backbone)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=self.train_bn)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch < self.unfreeze_backbone_at_epoch:
            return
        self.make_trainable(pl_module.backbone)  # also after a resume past the unfreezing epoch (setup froze it)
        group = next((g for g in optimizer.param_groups if g.get("name") == BACKBONE), None)
        if group is None:
            raise RuntimeError("BackboneFinetuning needs the optimizer's 'backbone' group (ferlab's Classifier)")
        head_lr = optimizer.param_groups[0]["lr"]
        target = head_lr * getattr(pl_module, "backbone_lr_mult", 1.0)  # optim.backbone_lr_mult still holds
        if epoch == self.unfreeze_backbone_at_epoch or self.previous_backbone_lr is None:
            lr = self.backbone_initial_lr if self.backbone_initial_lr is not None \
                else head_lr * self.backbone_initial_ratio_lr
        else:
            lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            lr = target if self.should_align and lr > target else lr
        group["lr"] = self.previous_backbone_lr = lr
        if self.verbose or epoch == self.unfreeze_backbone_at_epoch:
            log.info("epoch %d: head lr %.3g, backbone lr %.3g (trainable)", epoch, head_lr, lr)
