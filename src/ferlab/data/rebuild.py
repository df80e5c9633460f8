"""A datamodule from a data config read back from a file (a checkpoint's), through ferlab's registries only.

The stored config has the shape of `conf/data/*.yaml`: the one datamodule, a registered reader under `source`
and the cleaning rules under `clean`, every other value plain. Anything else is refused before anything is
built (`check_stored_data`), so `restore` can vet a checkpoint's data before predict or export runs.
"""

from __future__ import annotations

from typing import Any

from ferlab.errors import DataNotFound, FerlabError
from ferlab.runs.stored import check_plain, refused, target_and_kwargs

DATAMODULE = "ferlab.data.datamodule.FERDataModule"
CLEANING = "ferlab.data.clean.Cleaning"


def _parts(data: Any, where: str) -> tuple[tuple[type, dict], dict | None, dict]:
    """(the registered reader class and its kwargs, cleaning kwargs or None, the datamodule's other kwargs)."""
    from ferlab.data.sources.registry import source_class

    if not isinstance(data, dict):
        raise refused(where, "data", f"a {type(data).__name__} where a mapping was expected")
    if data.get("_target_") != DATAMODULE:
        raise refused(where, "data._target_", f"{data.get('_target_')!r} is not ferlab's datamodule ({DATAMODULE})")
    rest = {k: v for k, v in data.items() if k not in ("_target_", "source", "clean")}
    check_plain(rest, "data", where)
    target, source_kwargs = target_and_kwargs(data.get("source"), "data.source", where)
    try:
        source = source_class(target), source_kwargs
    except FerlabError as e:
        raise refused(where, "data.source._target_", str(e)) from None
    clean = data.get("clean")
    if clean is not None:
        target, clean = target_and_kwargs(clean, "data.clean", where)
        if target != CLEANING:
            raise refused(where, "data.clean._target_", f"{target!r} is not ferlab's cleaning rules ({CLEANING})")
    return source, clean, rest


def check_stored_data(data: Any, where: str) -> None:
    """Raise (one line naming the key) unless a stored data config names only ferlab's datamodule, a
    registered reader and plain values. Builds nothing."""
    _parts(data, where)


# Where and with how many processes data is decoded and cached is this machine's choice, never the file's.
LOCAL_KEYS = ("cache_dir", "num_workers", "decode_workers")


def build_stored_datamodule(data: Any, where: str, *, cache_dir: str | None, **kwargs: Any) -> Any:
    """The FERDataModule a stored data config describes, reading the dataset files it names (never creating
    them: a synthetic set the checkpoint was trained on must already be on disk). `cache_dir` and `kwargs`
    (the caller's, trusted) override its keys; its own cache folder and process counts are not used."""
    from ferlab.data.datamodule import FERDataModule

    (cls, source_kwargs), clean, rest = _parts(data, where)
    target = f"{cls.__module__}.{cls.__qualname__}"
    rest = {k: v for k, v in rest.items() if k not in LOCAL_KEYS}
    try:
        source = cls(**source_kwargs)
        datamodule = FERDataModule(source=source, clean=clean, cache_dir=cache_dir, **{**rest, **kwargs})
    except TypeError as e:  # an argument this version's reader or datamodule does not take
        raise FerlabError(f"{where}: cannot rebuild the stored data config ({target}): {e}") from None
    try:
        source.files()  # a reader lists only files it found, or raises DataNotFound: no second stat of each here
    except DataNotFound as e:
        raise DataNotFound(f"{where}: the data it was trained on is not on this machine ({e}); "
                           "pass data=<option> with its files (e.g. data=synthetic renders synthetic faces)") from None
    return datamodule
