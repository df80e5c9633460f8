"""Every dataset reader registers itself here, so a data config read back from a checkpoint or a run dir is
rebuilt only from ferlab's own readers (`ferlab.data.rebuild`), never through an arbitrary `_target_`.

Registry key = the class's import path, which is what `conf/data/*.yaml` names as `source._target_`.
"""

from __future__ import annotations

import importlib

from ferlab.errors import FerlabError

_SOURCES: dict[str, type] = {}
# The reader modules; importing them registers their classes. A new reader is one file plus one name here.
READER_MODULES = ("fer2013", "ferplus", "folders", "synthetic", "rafdb", "affectnet")


def register_source(cls: type) -> type:
    """Class decorator: register a reader under its import path (`module.QualName`)."""
    key = f"{cls.__module__}.{cls.__qualname__}"
    if _SOURCES.get(key, cls) is not cls:
        raise ValueError(f"data source {key!r} registered twice")
    _SOURCES[key] = cls
    return cls


def _load_all() -> None:
    for name in READER_MODULES:
        importlib.import_module(f"ferlab.data.sources.{name}")


def list_sources() -> list[str]:
    """Import paths of every registered reader, sorted."""
    _load_all()
    return sorted(_SOURCES)


def source_class(target: str) -> type:
    """The registered reader whose import path is exactly `target`, or a FerlabError."""
    _load_all()
    if target not in _SOURCES:
        raise FerlabError(f"unknown data source {target!r}; ferlab's readers: {', '.join(sorted(_SOURCES))}")
    return _SOURCES[target]
