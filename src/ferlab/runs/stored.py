"""The trust boundary: what ferlab reads back from a file is data, never code.

A checkpoint's stored run config, an exported model's metadata or a run directory's `.hydra/config.yaml` may
come from anyone (a lab's best.ckpt, a paper's release, a forum). None of it reaches `hydra.utils.instantiate`:
the few objects such a config describes are built through ferlab's own registries (`ferlab.models.registry`,
`ferlab.data.sources.registry`) with values that pass `check_plain` first, so nothing is called before the
whole config has been checked. Configs the user composes (conf/, experiments, overrides) stay code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ferlab.errors import FerlabError

# Keys that make Hydra call something, or change how it calls it.
HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})


def refused(where: str, key: str, what: str) -> FerlabError:
    """The one-line error for a stored value that is not plain data."""
    return FerlabError(f"{where}: refused {key} ({what}); a stored config is data: only ferlab's registered "
                       "models and data sources are rebuilt from it, with plain values")


def check_plain(value: Any, key: str, where: str) -> None:
    """Raise unless `value` is None, a bool, number or string, or lists and string-keyed dicts of those,
    with no Hydra instantiation key and no `${...}` interpolation anywhere. `key` names it in the error."""
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if "${" in value:
            raise refused(where, key, f"an interpolation {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{key}[{i}]", where)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if not isinstance(k, str):
                raise refused(where, sub, f"a {type(k).__name__} key")
            if k in HYDRA_KEYS:
                raise refused(where, sub, "a Hydra instantiation key: a callable chosen by the file")
            check_plain(item, sub, where)
        return
    raise refused(where, key, f"a {type(value).__name__} object")


def target_and_kwargs(cfg: Any, key: str, where: str) -> tuple[str, dict[str, Any]]:
    """A stored `{_target_: name, **kwargs}`: the target string and the keyword values, checked plain.
    Only `_target_` itself is allowed among Hydra's keys (`_args_`, `_partial_`, ... are refused)."""
    if not isinstance(cfg, dict):
        raise refused(where, key, f"a {type(cfg).__name__} where a mapping with _target_ was expected")
    target = cfg.get("_target_")
    if not isinstance(target, str) or not target:
        raise refused(where, f"{key}._target_", f"{target!r} is not a name")
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    check_plain(kwargs, key, where)
    return target, kwargs


def build_stored(build: Callable[..., Any], target: str, cfg: Any, key: str, where: str, what: str) -> Any:
    """`build(**kwargs)` from a stored `{_target_: target, **kwargs}` under `key`: one line naming the key when it
    names another target (`what`: what ferlab's is) or arguments `build` does not take."""
    found, kwargs = target_and_kwargs(cfg, key, where)
    if found != target:
        raise refused(where, f"{key}._target_", f"{found!r} is not ferlab's {what} ({target})")
    try:
        return build(**kwargs)
    except TypeError as e:
        raise FerlabError(f"{where}: cannot rebuild the stored {key} config: {e}") from None


def plain_list(value: Any, key: str, where: str, kind: type | tuple[type, ...]) -> list:
    """A stored list whose items are all of `kind` (bools are never numbers here)."""
    ok = isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    if not ok:
        raise refused(where, key, f"expected a list of {getattr(kind, '__name__', 'numbers')}, got {value!r}"[:200])
    return value
