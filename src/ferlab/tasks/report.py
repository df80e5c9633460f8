"""`ferlab report`: the runs table of run and sweep folders; `ferlab.search.report` builds it (every sweep's
report.md is the same table, written by the sweep callback)."""

from ferlab.search.report import main

__all__ = ["main"]
