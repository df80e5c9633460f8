"""Shared pieces of the benchmark scripts: composing the real train config, markdown tables, result files, CLI."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def compose_train(root: Path, overrides: Sequence[str], run_dir: Path) -> Any:
    """conf/train.yaml composed as `ferlab train` would, data and caches under `root`, the run under `run_dir`."""
    from ferlab.config.runner import compose_run

    return compose_run("train", [f"paths.root_dir={root}", *overrides], run_dir)


def child_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a `ferlab` process a benchmark starts: data and caches under `root`, this checkout's
    `benchmarks` and `ferlab` importable (installed or not), a run id of its own, then `extra`."""
    paths = [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "FERLAB_ROOT": str(root), "PYTHONPATH": os.pathsep.join(filter(None, paths)), **extra}
    env.pop("FERLAB_RUN_ID", None)
    return env


def data_root() -> Path:
    """Where benchmarks read data and caches: $FERLAB_ROOT or the repository (the same files `make train` uses)."""
    return Path(os.environ.get("FERLAB_ROOT", REPO)).resolve()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A markdown table; columns whose index is in `right` are right-aligned."""
    align = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line naming the machine and library versions the figures were taken on."""
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}")


def write(name: str, markdown: str, quick: bool = False) -> Path:
    """benchmarks/results/<name>.md, written atomically; a --quick check goes to <name>.quick.md (git-ignored),
    so checking that a script runs never replaces the measured figures."""
    from ferlab.runs.io import atomic_write_text

    return atomic_write_text(RESULTS / f"{name}{'.quick' if quick else ''}.md", markdown.rstrip() + "\n")


def cli(name: str, main: Callable[[bool], str], description: str) -> None:
    """`python -m benchmarks.<name> [--quick]`: run, print the markdown and write it to results/<name>[.quick].md."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the figures")
    args = parser.parse_args()
    markdown = main(quick=args.quick)
    print(markdown)
    print(f"\nwritten to {write(name, markdown, args.quick)}")
