"""What a network's outputs mean (`head=`): K class logits, 2 valence/arousal values, or both.

`head=classes` (the default) is every model's plain classifier. `head=va` makes the last linear layer a 2-output
regression (valence, arousal) and `head=expr_va` a multi-task layer of K + 2 outputs: the class logits first,
then valence and arousal, as hsemotion's multi-task AffectNet models (`enet_b0_8_va_mtl`) lay them out. The VA
values are tanh of those outputs (`va_activation=tanh`: bounded like the [-1, 1] targets; a linear output trained
on the CCC loss alone can drift far outside them) or the outputs themselves (`linear`, as hsemotion and
AffectNet's own baseline). The network's outputs stay raw (an exported file's too): `split` applies the
activation, and exported metadata names it.

A checkpoint's stored `head` is data (`ferlab.runs.stored`): `stored_head` rebuilds it from plain values only.
No torch import here: exported-model readers use it with numpy arrays.
"""

from __future__ import annotations

from typing import Any

from ferlab.errors import FerlabError

KINDS = ("classes", "va", "expr_va")
ACTIVATIONS = ("tanh", "linear")
VA_NAMES = ("valence", "arousal")
TARGET = "ferlab.lit.heads.Head"
VA_METRICS = ("ccc", "rmse", "pcc", "sagr")  # logged as <split>/<metric>_<valence|arousal>, plus <split>/ccc_mean
VA_METRIC_NAMES = (*(f"{m}_{d}" for m in VA_METRICS for d in VA_NAMES), "ccc_mean")


class Head:
    """The meaning of a network's outputs and the weights of the multi-task loss.

    Args:
        kind: classes | va | expr_va.
        num_classes: K, the data's classes (the network has K, 2 or K + 2 outputs; head=va ignores them).
        ce_weight: weight of the expression loss (`loss=`) in the total (expr_va).
        ccc_weight: weight of the CCC loss (1 - CCC per dimension, averaged) on valence/arousal.
        mse_weight: weight of a mean squared error on valence/arousal (0: CCC alone).
        va_activation: tanh (VA = tanh(output)) | linear (VA = output).
    """

    def __init__(self, kind: str = "classes", num_classes: int = 0, ce_weight: float = 1.0, ccc_weight: float = 1.0,
                 mse_weight: float = 0.0, va_activation: str = "tanh") -> None:
        if kind not in KINDS:
            raise FerlabError(f"head.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        if va_activation not in ACTIVATIONS:
            raise FerlabError(f"head.va_activation: expected one of {', '.join(ACTIVATIONS)}, got {va_activation!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise FerlabError(f"head.num_classes: expected a positive number of classes, got {num_classes!r}")
        weights = {"ce_weight": ce_weight, "ccc_weight": ccc_weight, "mse_weight": mse_weight}
        for key, value in weights.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise FerlabError(f"head.{key}: expected a number >= 0, got {value!r}")
        self.kind, self.num_classes, self.va_activation = kind, int(num_classes), va_activation
        self.ce_weight, self.ccc_weight, self.mse_weight = (float(v) for v in weights.values())

    def __repr__(self) -> str:
        return f"Head(kind={self.kind!r}, num_classes={self.num_classes})"

    @property
    def has_classes(self) -> bool:
        return self.kind != "va"

    @property
    def has_va(self) -> bool:
        return self.kind != "classes"

    @property
    def outputs(self) -> int:
        """The network's output width."""
        return (self.num_classes if self.has_classes else 0) + (len(VA_NAMES) if self.has_va else 0)

    def split(self, out: Any) -> tuple[Any, Any]:
        """(class logits (B, K) or None, valence/arousal (B, 2) or None, the activation applied) of raw network
        outputs (B, outputs), torch tensors or numpy arrays."""
        if out.shape[-1] != self.outputs:
            raise ValueError(f"{self}: expected {self.outputs} outputs, got {tuple(out.shape)}")
        k = self.num_classes if self.has_classes else 0
        va = out[..., k:] if self.has_va else None
        if va is not None and self.va_activation == "tanh":
            import numpy as np

            va = va.tanh() if hasattr(va, "tanh") else np.tanh(va)
        return (out[..., :k] if self.has_classes else None), va

    def describe(self) -> dict[str, Any]:
        """Plain values: what exported models' metadata and reports carry (which output column is what)."""
        k = self.num_classes if self.has_classes else 0
        columns = {"classes": [0, k]} if self.has_classes else {}
        columns.update({name: k + i for i, name in enumerate(VA_NAMES)} if self.has_va else {})
        return {"kind": self.kind, "num_classes": self.num_classes, "outputs": self.outputs, "columns": columns,
                "va_activation": self.va_activation}


def classes_head(num_classes: int) -> Head:
    """The plain classifier's head: what a checkpoint without a stored `head` has."""
    return Head("classes", num_classes)


def stored_head(config: Any, num_classes: int, where: str) -> Head:
    """The head a stored run config (or exported metadata) describes, built from plain values only; a config
    without one is a plain classifier of `num_classes`."""
    from ferlab.runs.stored import build_stored

    if not config:
        return classes_head(num_classes)
    if isinstance(config, dict) and "_target_" not in config:  # exported metadata: Head.describe()
        config = {"_target_": TARGET, **{k: config[k] for k in ("kind", "num_classes", "va_activation") if k in config}}

    def head(**kwargs: Any) -> Head:  # Head's own checks name the key; the stored config's place goes first
        try:
            return Head(**kwargs)
        except FerlabError as e:
            raise FerlabError(f"{where}: {e}") from None

    return build_stored(head, TARGET, config, "head", where, "output head")
