"""Training methods of the RAF-DB/AffectNet papers as the `train_method=` config group: importing this package registers
every method (`plain`, `eac`, `scn`, `dan`; one file each). See `ferlab.methods.base` for what a method provides."""

from ferlab.methods import dan, eac, plain, scn  # noqa: F401
from ferlab.methods.base import Method, MethodNet, Step
from ferlab.methods.registry import list_methods, method_for_target, register_method

__all__ = ["Method", "MethodNet", "Step", "list_methods", "method_for_target", "register_method"]
