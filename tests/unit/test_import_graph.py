"""Dependencies point one way (front -> features -> storage -> engines): no import cycle
in the package, and no import inside a function to dodge one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pybatchintory"


def _module(path: Path) -> str:
    return path.stem if path.stem != "__init__" else "__init__"


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module.split(".")[0] if node.module else "__init__")
        if isinstance(node, ast.If):  # if TYPE_CHECKING: still a dependency
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.level == 1 and sub.module:
                    found.add(sub.module.split(".")[0])
    return found


def _graph() -> dict[str, set[str]]:
    return {_module(path): _imports(ast.parse(path.read_text())) for path in PACKAGE.glob("*.py")}


def test_no_import_cycle() -> None:
    graph = _graph()
    graph.pop("__init__")
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*trail, node, dep])}"
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_import_inside_a_function() -> None:
    offenders = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and sub.level == 1:
                        offenders.append(f"{path.name}:{sub.lineno}")
    assert not offenders, offenders


def test_features_do_not_depend_on_the_client() -> None:
    graph = _graph()
    for feature in (
        "_status",
        "_trace",
        "_reset",
        "_coverage",
        "_plan",
        "_storage",
        "_backend",
        "_source",
    ):
        assert not graph[feature] & {"inventory", "sync", "cli"}, (feature, graph[feature])
