"""Where configs come from: ferlab's own, inside the package, and the user's config folder beside them.

Hydra looks a name up in these sources in order and takes the first it finds:
  1. ferlab's configs: `ferlab/conf` in the package (in a checkout, a link to the top-level conf/ and experiments/)
  2. the user's folder: `--config-dir DIR`, else `./conf` when the current folder has one
  3. `hydra.searchpath=[...]` entries, in their order
A user folder adds options to ferlab's groups (and new groups); a name ferlab already has would never be read,
so it is refused. Which values win is the defaults list's order: experiment, then local, then debug, then the
command line. Light on purpose: imported for `--help`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ferlab.errors import FerlabError

CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
SEARCHPATH_KEY = "hydra.searchpath"


@functools.cache
def conf_root() -> Path:
    """ferlab's config root, found through the package the same way in a checkout, an editable install or a wheel."""
    return Path(str(resources.files("ferlab") / "conf")).resolve()


def default_user_dir() -> Path | None:
    """`./conf` when the current folder has one that is not ferlab's own (running from ferlab's checkout)."""
    local = Path.cwd() / "conf"
    return local if local.is_dir() and local.resolve() != conf_root() else None


def check_user_dir(folder: Path, given_by: str) -> None:
    """A user config folder exists and only adds to ferlab's configs; else one FerlabError naming the file."""
    if not folder.is_dir():
        raise FerlabError(f"config folder not found: {folder} (from {given_by})")
    if all((folder / name).is_file() for name in ("train.yaml", "paths/default.yaml")):  # a ferlab checkout's conf/
        raise FerlabError(f"{folder} is another ferlab's own config folder, while this ferlab reads {conf_root()}: "
                          f"run the ferlab of that checkout (PYTHONPATH=src) or start from another folder")
    for path in sorted(folder.rglob("*.yaml")):
        rel = path.relative_to(folder)
        if rel.parts[0] == "local" and (conf_root() / rel).is_file():  # a checkout's own machine settings
            raise FerlabError(f"{path} would never be read: the ferlab checkout at {conf_root()} has its own "
                              f"local/{rel.name}, which comes first; move its settings into yours and delete it")
        if (conf_root() / rel).is_file():
            name = rel.with_suffix("").as_posix()
            option = "=".join(name.rsplit("/", 1)) if "/" in name else f"{name} config"  # hydra/launcher=slurm
            raise FerlabError(f"{path} shadows ferlab's {option}: give it another name (ferlab's is found first, "
                              f"so this file would never be read)")


def _flag_value(argv: Sequence[str]) -> str | None:
    """The value of `--config-dir DIR` / `--config-dir=DIR` / `-cd DIR` in argv, if given."""
    for i, arg in enumerate(argv):
        for flag in CONFIG_DIR_FLAGS:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def _searchpath_dirs(overrides: Sequence[str]) -> list[str]:
    """The folders of a `hydra.searchpath=[...]` override (file:// or plain paths; pkg:// ones are packages)."""
    entries = [o for o in overrides if o.lstrip("+").startswith(SEARCHPATH_KEY + "=")]
    if not entries:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = OverridesParser.create().parse_overrides(entries[:1])[0].value()
    paths = value if isinstance(value, list) else [value]
    return [str(p).removeprefix("file://") for p in paths if "://" not in str(p) or str(p).startswith("file://")]


def user_config_args(argv: Sequence[str]) -> list[str]:
    """A Hydra command line with the user's folder added (`--config-dir ./conf` when there is one and no
    --config-dir was given), every user folder checked first."""
    argv = list(argv)
    given = _flag_value(argv)
    if given is not None:
        check_user_dir(Path(given), "--config-dir")
    elif (local := default_user_dir()) is not None:
        check_user_dir(local, "./conf")
        argv = [CONFIG_DIR_FLAGS[0], str(local), *argv]
    for folder in _searchpath_dirs(argv):
        check_user_dir(Path(folder), SEARCHPATH_KEY)
    return argv


def user_searchpath_overrides(overrides: Sequence[str], config_dir: str | Path | None = None) -> list[str]:
    """In-process composition's version of `user_config_args`: `config_dir` (else ./conf) as hydra.searchpath,
    unless the overrides name their own search path (then those folders are checked and used as given)."""
    overrides = list(overrides)
    if any(o.lstrip("+").startswith(SEARCHPATH_KEY + "=") for o in overrides):
        for folder in _searchpath_dirs(overrides):
            check_user_dir(Path(folder), SEARCHPATH_KEY)
        return overrides
    folder = Path(config_dir) if config_dir is not None else default_user_dir()
    if folder is None:
        return overrides
    check_user_dir(folder, "config_dir" if config_dir is not None else "./conf")
    return [f"{SEARCHPATH_KEY}=[file://{folder.resolve()}]", *overrides]


def with_user_configs(main: Callable[..., Any]) -> Callable[..., Any]:
    """A Hydra entry point that adds the user's config folder to sys.argv first; a bad folder is one line."""

    @functools.wraps(main)
    def entry(*args: Any, **kwargs: Any) -> Any:
        try:
            sys.argv = [sys.argv[0], *user_config_args(sys.argv[1:])]
        except FerlabError as e:
            print(f"ferlab: error: {e}", file=sys.stderr)
            sys.exit(2)
        return main(*args, **kwargs)

    return entry
