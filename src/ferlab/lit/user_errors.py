"""Lightning's exceptions that are user mistakes, as one-line `FerlabError`s naming the key to change.

Matched by class name, so this module imports neither torch nor Lightning: the runner calls it on any error, and
the DDP launcher on an error a worker process raised.
"""

from __future__ import annotations

import math
import re

from ferlab.errors import FerlabError

# Lightning 2.6, data_connector._parse_num_batches: a fraction that selects no batch at all
_NO_BATCH = re.compile(r"You requested to check (?P<limit>[\d.e-]+) of the `(?P<split>\w+)_dataloader` but "
                       r"[\d.e-]+ \* (?P<length>\d+) < 1")


def one_line(message: str) -> str:
    """The first non-empty line of a message (Lightning's and torch's often run over several)."""
    return next((line.strip() for line in str(message).splitlines() if line.strip()), "")


def error_line(error: BaseException) -> str:
    """An exception in one line: its message's first line, or its class name when it has no message."""
    return one_line(error) or type(error).__name__


def user_error(kind: str, message: str) -> FerlabError | None:
    """The FerlabError for an exception of class name `kind` with `message`, or None when it is not a user mistake."""
    if kind != "MisconfigurationException":
        return None
    match = _NO_BATCH.search(message)
    if match is None:  # Lightning raises it for settings that cannot work together: the user's to change
        return FerlabError(f"invalid trainer setting: {one_line(message).replace('`', '')}")
    limit, split, length = float(match["limit"]), match["split"], int(match["length"])
    key = f"trainer.limit_{split}_batches"
    smallest = f"{math.ceil(1000 / length) / 1000:.3f}".rstrip("0")  # rounded up: Lightning takes int(f x batches)
    smallest += "0" if smallest.endswith(".") else ""  # a float: Lightning reads an int as a number of batches
    return FerlabError(
        f"{key}={limit:g} selects no {split} batch: the {split} split has {length} batch{'es' * (length != 1)} per "
        f"process and {limit:g} x {length} < 1; use a fraction of at least {key}={smallest}, or a number of "
        f"batches such as {key}=1")


def as_user_error(error: BaseException) -> FerlabError | None:
    """`user_error` for an exception object."""
    return user_error(type(error).__name__, str(error))
