"""Every builder registers itself here; tests parametrize over `list_models()`.

Registry name = builder function name = `conf/model/<name>.yaml`, whose `_target_` is the builder.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ferlab.errors import FerlabError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered builders (the `model=` config options), sorted."""
    import ferlab.models  # noqa: F401  (imports every family, which registers its builders)

    return sorted(_MODELS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder function registered as `name`."""
    import ferlab.models  # noqa: F401

    if name not in _MODELS:
        raise FerlabError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def builder_for_target(target: str) -> Callable[..., nn.Module]:
    """The registered builder a config names: its registry name or exactly its import path (`_target_`).

    A stored config (a checkpoint's) is rebuilt only this way, so it can name nothing but a ferlab model.
    """
    import ferlab.models  # noqa: F401

    by_path = {f"{fn.__module__}.{fn.__name__}": fn for fn in _MODELS.values()}
    builder = by_path.get(target) or _MODELS.get(target)
    if builder is None:
        raise FerlabError(f"{target!r} is not a registered ferlab model")
    return builder


def create_model(name: str, /, **kwargs) -> nn.Module:
    """Build a registered model by name (positional: `model=timm` has a `name` argument of its own)."""
    return get_builder(name)(**kwargs)
