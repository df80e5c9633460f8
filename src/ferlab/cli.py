"""The `ferlab` command: `ferlab <task> [hydra overrides]`; each task's module is imported only when run."""

from __future__ import annotations

import importlib
import sys

# task -> (module with a `main` entry point, one-line help). Hydra tasks parse their own arguments.
TASKS: dict[str, tuple[str, str]] = {
    "train": ("ferlab.train", "train a model (Hydra overrides; -m for a multirun sweep)"),
    "synth": ("ferlab.synth", "write synthetic faces in FER2013's CSV format"),
}

USAGE = """usage: ferlab <command> [overrides...]

Facial expression recognition experiments, configured with Hydra.

commands:
{commands}

`ferlab <command> --help` shows that command's options (for Hydra commands: the config groups).
`python -m ferlab <command>` does the same."""


def _usage() -> str:
    width = max(len(name) for name in TASKS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in TASKS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a task; its own parser (Hydra or argparse) handles the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in TASKS:
        print(f"ferlab: error: unknown command {name!r}; choose from {', '.join(TASKS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(TASKS[name][0])
    sys.argv = [f"ferlab {name}", *rest]
    module.main()
