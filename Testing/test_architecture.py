"""The engine's shape: no import cycles between its modules, and no module too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

LOGIC = Path(__file__).resolve().parents[1] / "LatentDriftSlicer" / "Logic"
PACKAGE = "latentdrift"
MAX_LINES = 700


def _module_name(path: Path) -> str:
    """``LOGIC/train/loop.py`` → ``latentdrift.finetune.loop``; a package's ``__init__.py`` → the package."""
    parts = path.relative_to(LOGIC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _engine_modules() -> dict[str, Path]:
    """Every module of the engine, by dotted name."""
    return {_module_name(path): path for path in sorted(LOGIC.rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The engine modules one import statement of ``module`` loads (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:
        base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    found = {target} if target in known else set()
    # ``from . import schemes`` imports a submodule, ``from .schemes import Scheme`` only the module
    found |= {f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known}
    return found


def _run_time_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for annotations never run)."""
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def import_graph() -> dict[str, set[str]]:
    """Module → the engine modules it imports anywhere in its file at run time (also inside functions;
    not the imports under ``if TYPE_CHECKING:``, which only annotations read)."""
    modules = _engine_modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imports = (node for node in _run_time_nodes(tree) if isinstance(node, ast.Import | ast.ImportFrom))
        is_package = path.name == "__init__.py"
        graph[name] = set().union(*(_imported(node, name, is_package, known) for node in imports)) - {name}
    return graph


def _parents(module: str) -> set[str]:
    """The packages above ``module`` (importing it runs their ``__init__``; not an edge of the design)."""
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, …, a]`` (a package importing its own submodules does not count), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module] - _parents(module)):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_graph_is_read_from_every_module_including_imports_inside_functions() -> None:
    graph = import_graph()
    assert "latentdrift.finetune.loop" in graph["latentdrift.finetune.jobs"]  # imported inside a function
    assert "latentdrift.segmentation.ldseg.network" in graph["latentdrift.segmentation.ldseg.training"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    annotated = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import settings\n")
    assert not [node for node in _run_time_nodes(annotated) if isinstance(node, ast.ImportFrom)][1:]


def test_the_engine_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_no_engine_module_is_over_700_lines() -> None:
    lengths = {
        path: len(path.read_text(encoding="utf-8").splitlines()) for path in _engine_modules().values()
    }
    too_long = {str(path.relative_to(LOGIC)): count for path, count in lengths.items() if count > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
