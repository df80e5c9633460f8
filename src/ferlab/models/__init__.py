"""The model zoo: importing this package registers every family's builders.

Every model is a `ferlab.models.base.FERNet`: `forward_features(x) -> (B, num_features)`, `num_features`,
`head_drop` + `head` (linear), `cam_layer`; built from `conf/model/<name>.yaml` (registry name = YAML name).
"""

from ferlab.models import (  # noqa: F401
    cliquenet,
    deep_emotion,
    ir50,
    mini_xception,
    mobilefacenet,
    resnet,
    small,
    timm_net,
    vgg,
)
from ferlab.models.base import FERNet
from ferlab.models.registry import create_model, list_models, register_model

__all__ = ["FERNet", "create_model", "list_models", "register_model"]
