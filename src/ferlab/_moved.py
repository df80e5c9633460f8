"""Module paths from before the regrouping by concern (see CHANGELOG.md), served for one release.

`import ferlab.train`, `from ferlab.lit import resume` and `_target_: ferlab.lit.ddp.DDPStrategy` in a user's
YAML still work: a meta-path finder answers an old name with the new module object itself (so `is` holds and
monkeypatching either name patches both) and warns once per name with a FutureWarning naming the new path.
No import happens until an old name is asked for, so `ferlab --help` stays instant.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    **{f"ferlab.{m}": f"ferlab.tasks.{m}" for m in
       ("train", "evaluate", "predict", "demo", "export", "explain", "synth", "align", "starter")},
    **{f"ferlab.{m}": f"ferlab.search.{m}" for m in
       ("sweep", "study", "trial", "study_report", "hparams", "tbname", "report", "report_plots")},
    "ferlab.lit.pruning": "ferlab.search.pruning",
    **{f"ferlab.{m}": f"ferlab.runs.{m}" for m in ("runfiles", "version", "stored", "device")},
    "ferlab.data.io": "ferlab.runs.io",
    **{f"ferlab.{m}": f"ferlab.config.{m}" for m in ("runner", "searchpath", "validate")},
    **{f"ferlab.lit.{m}": f"ferlab.checkpoints.{m}" for m in
       ("checkpoint_io", "ckpt_file", "restore", "resume", "resilience", "preemption", "fit_audit", "ddp",
        "init_from", "mismatch")},
}


class _Alias:
    """Loads an old name as the already-imported new module (its attributes, `__name__` and `__spec__` kept).
    Duck-typed loader and finder (importlib.abc is not imported: it costs more than the rest of `ferlab --help`)."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old name goes in the next release",
                      FutureWarning, stacklevel=2)  # warnings skips importlib's frames: 2 is the import line
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module is already executed."""


class _Finder:
    """Finds only the old names of MOVED."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias())


def install() -> None:
    """Put the finder first on `sys.meta_path` (once), ahead of the path finder that would find nothing."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
