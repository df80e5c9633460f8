"""Every training method registers itself here; a checkpoint's stored `method` is rebuilt only through it.

Registry name = class name lower-cased = `conf/train_method/<name>.yaml`, whose `_target_` is the class.
"""

from __future__ import annotations

from ferlab.errors import FerlabError

_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: register a method under its lower-cased class name."""
    name = cls.__name__.lower()
    if name in _METHODS:
        raise ValueError(f"method {name!r} registered twice")
    _METHODS[name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of all registered methods (the `train_method=` config options), sorted."""
    import ferlab.methods  # noqa: F401  (imports every method, which registers it)

    return sorted(_METHODS)


def method_for_target(target: str) -> type:
    """The registered method class a config names: its registry name or exactly its import path (`_target_`)."""
    import ferlab.methods  # noqa: F401

    by_path = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in _METHODS.values()}
    cls = by_path.get(target) or _METHODS.get(target)
    if cls is None:
        raise FerlabError(f"{target!r} is not a registered ferlab method; known: {', '.join(sorted(_METHODS))}")
    return cls
