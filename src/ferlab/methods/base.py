"""What every training method provides to the Classifier, and the wrapper that turns a zoo net into the network a
method's paper evaluates.

A method is an `nn.Module` built from `conf/train_method/<name>.yaml` (`_target_` + its constructor's keyword arguments)
and handed to `ferlab.lit.classifier.Classifier` as `method=`. It

- wraps the zoo net into the inference network (`wrap`): the net itself (plain, EAC), or a `MethodNet` holding the
  net as `body` and the method's own inference modules (SCN's importance weight, DAN's attention heads), which is
  what eval, predict, export and explain see and what a checkpoint's `net.*` weights are;
- computes the training loss and the logits of a batch (`step`), with parameters of its own that only training
  needs (DAN's class centers) as its own submodules: trained, checkpointed and in the optimizer's head group;
- keeps any other state its training changes (SCN's relabeled targets) in `extra_state`, saved with every
  checkpoint so a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from ferlab.errors import FerlabError
from ferlab.models.base import FERNet

Loss = Callable[[Tensor, Tensor], Tensor]
Gather = Callable[[Tensor], Tensor]  # (N,) on this rank -> (world_size * N,) in rank order


class Step(NamedTuple):
    """A training batch's result: the loss to minimise, the logits (B, K), and the targets the classification loss
    was computed against (the batch's own, or SCN's relabeled ids)."""

    loss: Tensor
    logits: Tensor
    targets: Tensor


def class_ids(y: Tensor) -> Tensor:
    """Class ids (B,) from ids or (B, K) distributions (their most-voted class)."""
    return y.argmax(1) if y.ndim == 2 else y


class Method(nn.Module):
    """Plain training: logits = net(x), loss = the configured loss. Subclasses change `wrap` and `step`.

    `needs_index`: training batches carry each image's row in the train split as their last element
    (`FERDataModule.index_batches`). `terms`: the names of the loss terms logged as `train/<name>` per epoch (the
    epoch's mean; a subclass may put another torchmetrics Metric under a name in `term_means`).
    """

    needs_index = False
    wraps = False  # whether `wrap` returns a MethodNet (the zoo net's weights under `body.`)
    terms: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        # torchmetrics means, as the Classifier's train/loss: their partial state is saved mid-epoch
        self.term_means = nn.ModuleDict({name: MeanMetric() for name in self.terms})

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def wrap(self, net: nn.Module) -> nn.Module:
        """The inference network for `net` (a zoo model); checks that `net` has what the method needs."""
        return net

    def setup_fit(self, datamodule: Any) -> None:
        """Called once the data is set up for training (per rank): e.g. the train split's targets."""

    def step(self, net: nn.Module, x: Tensor, y: Tensor, loss_fn: Loss, *, epoch: int,
             index: Tensor | None = None, gather: Gather | None = None) -> Step:
        """Loss and logits of a training batch: x (B, C, H, W) normalized, y ids (B,) or distributions (B, K)."""
        logits = net(x)
        return Step(loss_fn(logits, y), logits, y)

    def log_terms(self, batch_size: int, **values: Tensor) -> None:
        """Accumulate this batch's loss terms into their epoch means."""
        for name, value in values.items():
            self.term_means[name].update(value.detach(), weight=batch_size)

    def extra_state(self) -> dict[str, Any]:
        """Training state that is neither a weight nor an optimizer's (plain tensors: weights_only loadable)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of `extra_state`, called when a run resumes from a checkpoint."""


class LastValue(Metric):
    """The value of the last update (e.g. how many images are relabeled at the epoch's end); a torchmetrics state,
    so a checkpoint written mid-epoch keeps it."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("value", default=torch.tensor(0.0), dist_reduce_fx="max")  # every rank holds the same

    def update(self, value: Tensor) -> None:
        self.value = value.detach().float().reshape(())

    def compute(self) -> Tensor:
        return self.value


class MethodNet(FERNet):
    """A zoo net (`body`) plus a method's inference modules, with the FERNet surface of the whole.

    The body's feature-map surface and Grad-CAM layer pass through. For fine-tuning, the backbone is the body's
    (without its head and fresh modules); the method's own modules are new and learn as the head does.
    """

    def __init__(self, body: FERNet) -> None:
        super().__init__()
        self.body = body
        self.num_features = body.num_features
        self.feature_map_channels = body.feature_map_channels
        self.no_feature_map_reason = body.no_feature_map_reason
        if body.cam_layer_name:
            self.set_cam_layer(body.cam_layer)

    def forward_feature_map(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, h, w)
        return self.body.forward_feature_map(x)

    def pool_features(self, fmap: Tensor) -> Tensor:  # (B, C, h, w) -> (B, num_features)
        return self.body.pool_features(fmap)


def require_fernet(net: nn.Module, method: str) -> FERNet:
    """`net` as a FERNet, or the one-line error for a model of the user's own without that surface."""
    if not isinstance(net, FERNet):
        raise FerlabError(f"train_method={method} needs a ferlab zoo model (the FERNet surface); "
                          f"{type(net).__name__} is not one")
    return net


def require_feature_map(net: nn.Module, method: str, *, linear_on_pool: bool = False) -> FERNet:
    """`net` if it has a single feature map (and, with `linear_on_pool`, a linear head on its global average:
    what class activation maps need); else the one-line error naming the model and the method."""
    net = require_fernet(net, method)
    if not net.has_feature_map:
        raise FerlabError(f"train_method={method} needs a feature map, and {type(net).__name__} has none: "
                          f"{net.no_feature_map_reason}")
    if linear_on_pool and (not isinstance(net.head, nn.Linear) or net.num_features != net.feature_map_channels):
        raise FerlabError(f"train_method={method} needs a linear head on the pooled feature map (class activation maps); "
                          f"{type(net).__name__} maps {net.feature_map_channels} channels to {net.num_features} "
                          "features before its head")
    return net


@torch.no_grad()
def last_write_wins(table: Tensor, index: Tensor, values: Tensor) -> None:
    """table[index] = values in place, where a repeated index takes its last value (deterministic on any device,
    unlike index_put_ with duplicates on CUDA)."""
    if not len(index):
        return
    unique, inverse = torch.unique(index, return_inverse=True)
    position = torch.arange(len(index), device=index.device)
    last = torch.full((len(unique),), -1, dtype=position.dtype, device=index.device)
    last.scatter_reduce_(0, inverse, position, reduce="amax")
    table[unique] = values[last].to(table.dtype)
