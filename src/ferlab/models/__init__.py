"""The model zoo: importing this package registers every family's builders."""

from ferlab.models import resnet  # noqa: F401
from ferlab.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
