"""`make bench`: run every benchmark module in benchmarks/ (each exposes `main(quick=False) -> str`), write its
markdown to benchmarks/results/<module>.md and print it. A benchmark that fails is reported and the rest still run.

    .venv/bin/python -m benchmarks.run_all [--quick] [--only overhead,startup]
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import write

HELPERS = {"run_all", "common"}


def modules() -> list[str]:
    """Benchmark modules: every module of the package with a `main`, in alphabetical order."""
    here = Path(__file__).resolve().parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in HELPERS)
    return [n for n in names if callable(getattr(importlib.import_module(f"benchmarks.{n}"), "main", None))]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; the exit status is the number that failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the scripts, not the figures")
    parser.add_argument("--only", default="", help="comma-separated module names (default: all)")
    args = parser.parse_args(argv)
    available = modules()
    wanted = [n for n in args.only.split(",") if n] or available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(available)}")
    names = [n for n in available if n in wanted]
    failed = []
    threads = torch.get_num_threads()
    for name in names:
        torch.set_num_threads(threads)  # a benchmark that pins one thread must not pin the next ones
        print(f"\n## benchmarks.{name}\n", flush=True)
        start = time.perf_counter()
        try:
            markdown = importlib.import_module(f"benchmarks.{name}").main(quick=args.quick)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        path = write(name, markdown, args.quick)
        print(markdown)
        print(f"\n({time.perf_counter() - start:.0f} s; written to {path})", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
