"""The package layout and its layer rule, read from the source with `ast` (nothing is imported).

Layers, bottom-up; a module may import its own layer and the ones below, never one above:

    foundation   errors, labels, _moved, runs/ (atomic io, run files, version, stored configs, device), weights/
    data, models the datasets and the model zoo
    methods      training methods around a net (EAC, SCN, DAN)
    lit          the LightningModule and its training parts
    search       sweeps, studies, trials, pruning, the runs table, HPARAMS, run names
    config       composition, user config folders, the rule table
    checkpoints  checkpoint files, restore, resume, pre-emption, DDP stop handling, init_from
    analysis, infer, trackers   eval/explain analyses, inference and export, MLflow/W&B
    tasks        one module per `ferlab` command (and `python -m ferlab.weights.convert`)
    entry        the `ferlab` package's facade, cli, __main__, the Hydra sweeper plugin

Every import counts, also one inside a function (a lazy import is still a dependency); only imports under
`if TYPE_CHECKING:` do not (type-only, as import-linter's `exclude_type_checking_imports`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    ("ferlab.errors", "ferlab.labels", "ferlab._moved", "ferlab.runs", "ferlab.weights"),
    ("ferlab.data", "ferlab.models"),
    ("ferlab.methods",),
    ("ferlab.lit",),
    ("ferlab.search",),
    ("ferlab.config",),
    ("ferlab.checkpoints",),
    ("ferlab.analysis", "ferlab.infer", "ferlab.trackers"),
    ("ferlab.tasks", "ferlab.weights.convert"),
    ("ferlab", "ferlab.cli", "ferlab.__main__", "hydra_plugins"),
]

# (importer, imported): why the arrow runs upward. Each must still exist (a stale entry fails the test).
ALLOWED_UP: dict[tuple[str, str], str] = {}

TOP_LEVEL = {"__init__", "__main__", "cli", "errors", "labels", "_moved"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Every module of ferlab and of the Hydra plugin, by dotted name (a package by its __init__)."""
    out = {}
    for path in [*(SRC / "ferlab").rglob("*.py"), *(SRC / "hydra_plugins").rglob("*.py")]:
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _known(name: str) -> str | None:
    """The module `name` lives in (itself, or the longest module prefix of an attribute path)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, tree: ast.AST, top_only: bool) -> Iterator[str]:
    """The ferlab modules `module` imports; `top_only`: only those run when it is imported (not inside defs)."""
    is_pkg = MODULES[module].name == "__init__.py"
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if top_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_pkg else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            target = _known(name)
            if target and target != module:
                yield target
        stack.extend(ast.iter_child_nodes(node))


def _graph(top_only: bool) -> dict[str, set[str]]:
    return {m: set(_imports(m, ast.parse(p.read_text(encoding="utf-8")), top_only)) for m, p in MODULES.items()}


def layer_of(module: str) -> int:
    """The layer of the longest prefix of `module` named in LAYERS."""
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), i
    assert layer is not None, f"{module} is in no layer of tests/test_layout.py: place its folder there"
    return layer


def test_no_arrow_runs_up_a_layer() -> None:
    graph = _graph(top_only=False)
    upward = {(m, t) for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m)}
    unexplained = sorted(upward - set(ALLOWED_UP))
    assert not unexplained, "imports from a lower layer to a higher one:\n" + "\n".join(f"{m} -> {t}" for m, t in unexplained)
    stale = sorted(set(ALLOWED_UP) - upward)
    assert not stale, f"ALLOWED_UP names arrows that no longer exist: {stale}"


def test_no_import_cycle_at_module_level() -> None:
    # a module importing its own parent package is not a cycle: Python imports the parent first anyway
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in _graph(top_only=True).items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_source_file_over_400_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in MODULES.values() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split by concern): {long}"


def test_only_entry_and_foundation_modules_at_the_top() -> None:
    flat = {p.stem for p in (SRC / "ferlab").glob("*.py")}
    assert flat - TOP_LEVEL == set(), f"modules flat in src/ferlab/ that belong in a folder: {sorted(flat - TOP_LEVEL)}"


def test_the_rule_sees_arrows() -> None:
    """The parser finds a lazy import inside a function and skips a TYPE_CHECKING one (the rule cannot pass blind)."""
    graph = _graph(top_only=False)
    assert "ferlab.lit.losses" in graph["ferlab.tasks.train"] or "ferlab.lit.classifier" in graph["ferlab.tasks.train"]
    assert "ferlab.search.report" in graph["ferlab.search.sweep"]  # imported inside a function only
    assert "ferlab.search.report" not in _graph(top_only=True)["ferlab.search.sweep"]
    assert "ferlab.analysis.tta" not in graph["ferlab.lit.classifier"]  # under TYPE_CHECKING
    assert layer_of("ferlab.data.sources.folders") < layer_of("ferlab.infer.preprocessing")
    assert "ferlab.data.preprocessing" in graph["ferlab.infer.preprocessing"]  # the record, read from below infer
