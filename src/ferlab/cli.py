"""The `ferlab` command: `ferlab <task> [hydra overrides]`; each task's module is imported only when run."""

from __future__ import annotations

import importlib
import shlex
import sys

# task -> (module with a `main` entry point, one-line help). Hydra tasks parse their own arguments.
TASKS: dict[str, tuple[str, str]] = {
    "train": ("ferlab.tasks.train", "train a model (Hydra overrides; -m for a multirun sweep)"),
    "synth": ("ferlab.tasks.synth", "write synthetic faces in any dataset layout (FER2013/FER+ CSVs, image folders)"),
    "report": ("ferlab.tasks.report", "one results table (markdown|csv|json, --plot) from run and sweep dirs"),
    "predict": ("ferlab.tasks.predict", "classify the faces in photos, folders and videos (ckpt_path=... input=...)"),
    "demo": ("ferlab.tasks.demo", "real-time webcam or video demo: faces, labels and FPS on every frame"),
    "export": ("ferlab.tasks.export", "export a checkpoint to ONNX or TorchScript with a parity check"),
    "eval": ("ferlab.tasks.evaluate", "per-class report and confusion matrix of a checkpoint (ckpt_path=... [split=] [tta=])"),
    "explain": ("ferlab.tasks.explain", "saliency, Grad-CAM, filters, misclassified images, prototypes (ckpt_path=... method=...)"),
    "align": ("ferlab.tasks.align", "aligned face crops from a folder of photos, class folders kept (input=... output=...)"),
    "init": ("ferlab.tasks.starter", "write a starter project: your own conf/ (an experiment, local data paths) [DIR]"),
}

HYDRA_FLAG_CONFLICT = "Only one of --run, --multirun, --cfg, --info"
NOT_HYDRA = ("synth", "report")  # tasks with their own argparse command line

USAGE = """usage: ferlab <command> [overrides...]  |  ferlab --version

Facial expression recognition experiments, configured with Hydra.

commands:
{commands}

`ferlab <command> --help` shows that command's options (for Hydra commands: the config groups).
Your own configs: ./conf in the current folder (or --config-dir DIR) adds to ferlab's; see `ferlab init`.
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
    if argv[0] in ("--version", "-V"):
        from ferlab.runs.version import version_string

        print(f"ferlab {version_string()}")
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    if name not in TASKS:
        print(f"ferlab: error: unknown command {name!r}; choose from {', '.join(TASKS)}", file=sys.stderr)
        sys.exit(2)
    hint = None if name in NOT_HYDRA else quoting_hint(rest)
    if hint:
        print(f"ferlab {name}: error: {hint}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(TASKS[name][0])
    sys.argv = [f"ferlab {name}", *rest]
    try:
        module.main()
    except ValueError as e:  # Hydra's check of its own flags (e.g. -m with --cfg) raises a bare ValueError
        if not str(e).startswith(HYDRA_FLAG_CONFLICT):
            raise
        print(f"ferlab {name}: error: {e}", file=sys.stderr)
        sys.exit(2)


def _needs_quotes(value: str) -> bool:
    return not value.isascii() or any(c.isspace() for c in value)


def _quoted(value: str, sweep: bool) -> str | None:
    """`value` as a Hydra quoted string (each element of a comma list in a multirun); None if it has both quotes."""
    quote = next((q for q in "\"'" if q not in value), None)
    if quote is None:
        return None
    parts = value.split(",") if sweep else [value]
    return ",".join(f"{quote}{part}{quote}" for part in parts)


def quoting_hint(args: list[str]) -> str | None:
    """For the first override Hydra cannot parse whose value has a space or a non-ASCII character (an unquoted
    path such as /data/数据 集/fer5), the message giving the quoted form to type; None when there is none."""
    candidates = [a for a in args if "=" in a and not a.startswith("-") and _needs_quotes(a.partition("=")[2])]
    if not candidates:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    sweep = any(a in ("-m", "--multirun") for a in args)
    for arg in candidates:
        key, _, value = arg.partition("=")
        fixed = _quoted(value.strip(), sweep)
        try:
            parser.parse_override(arg)
            continue  # Hydra takes it as it is
        except HydraException:  # lexer and parser errors alike
            if fixed is None:
                continue
        try:
            parser.parse_override(f"{key}={fixed}")
        except HydraException:  # lexer and parser errors alike
            continue  # quoting does not help: Hydra's own message says what is wrong
        return (f"cannot parse the override {arg!r}: a value with spaces or non-ASCII characters must be quoted "
                f"for Hydra; type it as {shlex.quote(f'{key}={fixed}')}")
    return None
