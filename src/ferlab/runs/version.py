"""Which ferlab made a result: the package version, and the git commit when running from a checkout.

Recorded in every run's metrics.json and checkpoint, printed by `ferlab --version`. Computed on first use only
(one `git` call, never at import), so `--help` stays instant.
"""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path


def _git(checkout: Path, *args: str) -> str | None:
    try:  # no optional locks: a sweep's jobs ask at once, and none of them may touch the index
        out = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _checkout() -> Path | None:
    """The repository this package is imported from (src/ferlab inside it), or None for an installed copy."""
    package = Path(__file__).resolve().parents[1]  # src/ferlab (this file is src/ferlab/runs/version.py)
    root = package.parents[1]
    return root if package.parent.name == "src" and (root / ".git").exists() and (root / "pyproject.toml").is_file() else None


@functools.cache
def version_info() -> dict[str, str | bool | None]:
    """{"version", "commit", "modified"}: commit and modified (uncommitted changes to tracked files) are None
    outside a checkout."""
    try:
        version = metadata.version("ferlab")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        version = "unknown"
    checkout = _checkout()
    commit = _git(checkout, "rev-parse", "HEAD") if checkout else None
    status = _git(checkout, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": version, "commit": commit, "modified": None if status is None else bool(status)}


def version_string() -> str:
    """`0.1.0`, or `0.1.0 (git 1a2b3c4d5e, modified)` from a checkout."""
    info = version_info()
    if not info["commit"]:
        return str(info["version"])
    return f"{info['version']} (git {str(info['commit'])[:10]}{', modified' if info['modified'] else ''})"
