"""`train_method=plain` (the default): the zoo net as it is, trained with the configured loss."""

from __future__ import annotations

from ferlab.methods.base import Method
from ferlab.methods.registry import register_method


@register_method
class Plain(Method):
    """logits = net(x); loss = loss(logits, y). Nothing wraps the net: checkpoints are a plain zoo net's."""
