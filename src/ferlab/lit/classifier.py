"""The one LightningModule: any zoo net, loss, optimizer and scheduler from config; torchmetrics metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ferlab.data.preprocessing import KEY as PREPROCESSING_KEY
from ferlab.data.preprocessing import training_record
from ferlab.errors import FerlabError
from ferlab.lit.finetune import build_optimizer, in_backbone
from ferlab.lit.heads import Head
from ferlab.lit.multitask import MultiTask
from ferlab.methods.base import Method, MethodNet
from ferlab.methods.plain import Plain
from ferlab.runs.version import version_info

if TYPE_CHECKING:  # a type only: analysis/ sits above lit/ (tests/test_layout.py)
    from ferlab.analysis.tta import TestTimeAugment


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {"acc": MulticlassAccuracy(num_classes, average="micro"), "f1_macro": MulticlassF1Score(num_classes, average="macro")},
        prefix=f"{prefix}/",
    )


class Classifier(pl.LightningModule):
    """Trains `net` with `loss`; logs train/val/test loss, accuracy and macro-F1 per epoch.

    Args:
        net: a zoo model (injected; not saved in hyperparameters).
        optimizer: a partial taking `params` (Hydra `_partial_: true`).
        scheduler: a callable taking the optimizer and returning Lightning's lr_scheduler dict, or None.
        loss: a module taking (logits, targets); targets are class ids (B,) or distributions (B, K).
        num_classes, class_names: from the data config.
        test_prefixes: metric prefix of each test dataloader, e.g. ["test"] or ["test_public", "test_private"].
        config: the resolved run config as plain containers, stored so eval/predict can rebuild the model.
        backbone_lr_mult: the backbone's learning rate is the head's times this (`optim.backbone_lr_mult`).
        fresh_modules: top-level modules of `net` initialised anew where the rest was loaded (`model.pretrained`,
            `init_from`): they learn like the head, outside the backbone.
        tta: test-time augmentation applied in test steps (`tta=`), or None for one plain forward pass.
        head: what the net's outputs are (`head=`); one with valence/arousal outputs hands the steps to
            `ferlab.lit.multitask.MultiTask`. None: K class logits.
        method: the training method (`train_method=`, `ferlab.methods`); None is plain training. It wraps `net` into the
            network its paper evaluates (`self.net`), computes the training loss, and owns its training-only
            parameters and state.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], dict] | None = None,
        loss: nn.Module | None = None,
        *,
        num_classes: int,
        class_names: Sequence[str],
        test_prefixes: Sequence[str] = ("test",),
        config: dict | None = None,
        backbone_lr_mult: float = 1.0,
        fresh_modules: Sequence[str] = (),
        tta: TestTimeAugment | None = None,
        head: Head | None = None,
        method: Method | None = None,
    ) -> None:
        super().__init__()
        # plain containers only, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "loss", "tta", "head", "method"], logger=False)
        self.method = method if method is not None else Plain()
        if head is not None and head.has_va and not isinstance(self.method, Plain):
            raise FerlabError(f"train_method={type(self.method).__name__.lower()} trains class scores only; "
                              f"head={head.kind} (valence/arousal) needs train_method=plain")
        self.net = self.method.wrap(net)
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.backbone_lr_mult, self.fresh_modules = backbone_lr_mult, list(fresh_modules)
        self.tta = tta if tta is not None and tta.mode != "none" else None
        self.train_metrics = MulticlassAccuracy(num_classes, average="micro")
        # a torchmetrics mean rather than Lightning's own epoch mean: its partial state is saved with a checkpoint
        # written mid-epoch (ferlab.checkpoints.resilience.EpochState), so a resumed epoch averages all its batches
        self.train_loss = MeanMetric()
        self.val_metrics = _metrics(num_classes, "val")
        self.test_prefixes = list(test_prefixes)
        self.test_metrics = nn.ModuleList([_metrics(num_classes, p) for p in self.test_prefixes])
        self.test_f1 = nn.ModuleList([MulticlassF1Score(num_classes, average=None) for _ in self.test_prefixes])
        # eval losses as torchmetrics means: exact over uneven DDP shards, where Lightning's sync_dist mean
        # divides the summed image count by the world size as an integer
        self.val_loss = MeanMetric()
        self.test_loss = nn.ModuleList([MeanMetric() for _ in self.test_prefixes])
        self.multitask = MultiTask(head, self.test_prefixes) if head is not None and head.has_va else None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @property
    def backbone(self) -> nn.Module:
        """The network without its head (and fresh modules): what `BackboneFinetuning` freezes and
        `backbone_lr_mult` slows down."""
        root = self.net.body if isinstance(self.net, MethodNet) else self.net  # a method's own modules are new
        return nn.ModuleList([m for name, m in root.named_children() if in_backbone(name, self.fresh_modules)])

    def setup(self, stage: str) -> None:
        # a loss that weighs classes (loss=weighted_ce) learns the train split's counts once the data is loaded
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and dm is not None and hasattr(self.loss_fn, "set_class_counts"):
            self.loss_fn.set_class_counts(dm.class_counts)
        if stage == "fit" and dm is not None:
            dm.index_batches = self.method.needs_index  # training batches end with each image's train-split row
            self.method.setup_fit(dm)

    @staticmethod
    def hard_targets(y: Tensor) -> Tensor:
        """Class ids for metrics: distributions (B, K) reduce to their most-voted class."""
        return y.argmax(1) if y.ndim == 2 else y

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        if self.multitask is not None:  # (x, y, valence/arousal targets)
            return self.multitask.training_step(self, batch)
        # (x, y) or, with batch mixing, (x, mixed soft targets (B, K), the images' own class ids (B,)); a method
        # that needs them gets each image's train-split row (B,) as the last element
        x, y, *hard = batch
        index = hard.pop() if self.method.needs_index else None
        step = self.method.step(self.net, x, y, self.loss_fn, epoch=self.current_epoch, index=index,
                                gather=self._gather if self.trainer.world_size > 1 else None)
        self.train_metrics(step.logits.argmax(1), hard[0] if hard else self.hard_targets(step.targets))
        self.train_loss.update(step.loss.detach(), weight=len(x))
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        self.log("train/acc", self.train_metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        for name, mean in self.method.term_means.items():
            self.log(f"train/{name}", mean, on_step=False, on_epoch=True, batch_size=len(x))
        return step.loss

    def _gather(self, values: Tensor) -> Tensor:
        """(N,) on this rank -> every rank's values concatenated in rank order (N may differ between ranks)."""
        sizes = self.all_gather(torch.tensor(len(values), device=values.device)).view(-1)
        padded = values.new_zeros(int(sizes.max()))
        padded[: len(values)] = values
        gathered = self.all_gather(padded)  # (world_size, max N)
        return torch.cat([gathered[r, : int(n)] for r, n in enumerate(sizes.tolist())])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.multitask is not None:
            return self.multitask.validation_step(self, batch)
        x, y = batch
        logits = self(x)
        self.val_loss.update(self.loss_fn(logits, y), weight=len(x))
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=len(x))
        self.val_metrics.update(logits, self.hard_targets(y))
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=len(x))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.multitask is not None:
            return self.multitask.test_step(self, batch, dataloader_idx)
        x, y = batch
        prefix, y = self.test_prefixes[dataloader_idx], self.hard_targets(y)
        if self.tta is None:
            logits = self(x)
            loss = nn.functional.cross_entropy(logits, y)
        else:  # the views' averaged softmax: metrics take probabilities as they take logits
            logits = self.tta(self.net, x)
            loss = nn.functional.nll_loss(logits.clamp_min(1e-12).log(), y)
        self.test_loss[dataloader_idx].update(loss, weight=len(x))
        self.log(f"{prefix}/loss", self.test_loss[dataloader_idx], add_dataloader_idx=False, batch_size=len(x))
        self.test_metrics[dataloader_idx].update(logits, y)
        self.test_f1[dataloader_idx].update(logits, y)
        self.log_dict(self.test_metrics[dataloader_idx], add_dataloader_idx=False, batch_size=len(x))
        self._tested[dataloader_idx].append((logits.argmax(1).detach(), y.detach()))

    def on_test_epoch_start(self) -> None:
        # per test dataloader: (predicted class ids (B,), targets (B,)) of every batch, in loader order, so the
        # eval report after `ferlab train test=true` needs no second pass through the network
        self._tested: list[list[tuple[Tensor, Tensor]]] = [[] for _ in self.test_prefixes]

    def tested_predictions(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Metric prefix -> (predictions (N,), targets (N,)) on CPU of this process's last test run."""
        out = {}
        for prefix, batches in zip(self.test_prefixes, getattr(self, "_tested", []), strict=False):
            if batches:
                out[prefix] = (torch.cat([p for p, _ in batches]).cpu(), torch.cat([t for _, t in batches]).cpu())
        return out

    def on_test_epoch_end(self) -> None:
        classes = self.multitask is None or self.multitask.head.has_classes
        for prefix, f1 in zip(self.test_prefixes, self.test_f1 if classes else [], strict=False):
            for name, value in zip(self.hparams.class_names, f1.compute(), strict=False):
                self.log(f"{prefix}/f1/{name}", value, add_dataloader_idx=False)
            f1.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ferlab_version"] = version_info()  # plain strings and bools: weights_only loadable
        # the normalization actually used ("auto" is measured on train), so restore() feeds inputs alike
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "mean"):
            checkpoint["ferlab_normalization"] = {"mean": dm.mean.flatten().tolist(), "std": dm.std.flatten().tolist()}
            # how the inputs were made (size, channels, normalization, face detector and alignment): predict applies it
            checkpoint[PREPROCESSING_KEY] = training_record(dm)
        state = self.method.extra_state()
        if state:  # e.g. SCN's relabeled targets: a resumed run trains on them
            checkpoint["ferlab_method_state"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.method.load_extra_state(checkpoint.get("ferlab_method_state") or {})

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_factory, self, self.backbone_lr_mult)
        schedule = self.scheduler_factory(optimizer) if self.scheduler_factory is not None else None
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}
