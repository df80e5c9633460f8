"""Checkpoints that ship inside ferlab: `ckpt_path=builtin:<name>` (predict, demo, eval, explain, export) and
`init_from=builtin:<name>` (train) are resolved here, and only here.

| name | network | trained on | licence |
|---|---|---|---|
| fer2013_mini_xception | mini-Xception (Arriaga et al. 2017), 64x64 gray | FER2013, by oarriaga/face_classification | MIT (NOTICE) |

Light on purpose (no torch): `ferlab.config.runner.require_checkpoint` uses it before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferlab.errors import FerlabError

PREFIX = "builtin:"


@dataclass(frozen=True)
class Builtin:
    """A shipped checkpoint: its file beside this module and one line on what it is."""

    file: str
    summary: str


BUILTINS: dict[str, Builtin] = {
    "fer2013_mini_xception": Builtin(
        "fer2013_mini_xception.ckpt",
        "mini-Xception (Arriaga et al. 2017) trained on FER2013 by oarriaga/face_classification, 64x64 gray, "
        "7 classes; MIT licence (ferlab/weights/NOTICE)",
    ),
}
DEFAULT = "builtin:fer2013_mini_xception"  # what `ferlab predict` and `ferlab demo` use without ckpt_path=


def is_builtin(value: Any) -> bool:
    """True for a `builtin:<name>` value."""
    return isinstance(value, str) and value.strip().startswith(PREFIX)


def builtin_path(name: str) -> Path:
    """The packaged file of a built-in checkpoint; an unknown name is one line listing the known ones."""
    if name not in BUILTINS:
        known = ", ".join(PREFIX + n for n in BUILTINS)
        raise FerlabError(f"unknown built-in checkpoint {PREFIX}{name}; known: {known}")
    path = Path(__file__).with_name(BUILTINS[name].file)
    if not path.is_file():
        raise FerlabError(f"built-in checkpoint {PREFIX}{name} is missing from this installation ({path}); "
                          "reinstall ferlab")
    return path


def resolve_checkpoint(value: Any) -> Path:
    """The file a `ckpt_path` / `init_from` value names: `builtin:<name>` -> the packaged file, else the path."""
    if is_builtin(value):
        return builtin_path(value.strip().removeprefix(PREFIX).strip())
    return Path(str(value))


def describe(value: Any) -> str | None:
    """The one-line summary of a `builtin:<name>` value (None for anything else or an unknown name)."""
    entry = BUILTINS.get(value.strip().removeprefix(PREFIX).strip()) if is_builtin(value) else None
    return entry.summary if entry else None
