"""The package's shape: short functions and no import cycles between its modules (see README, "How the code
is organised")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deft_clean"
MAX_LINES = 80  # longest function or method, decorators and docstring included


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in functions(ast.parse(path.read_text(), str(path))):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - start + 1
            if length > MAX_LINES:
                found.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    return found


def module_imports() -> dict[str, set[str]]:
    """Package modules each module imports at module level (imports inside functions and under
    TYPE_CHECKING are deferred, so they cannot form a cycle at import time)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:
                    targets.update(alias.name for alias in node.names)
        graph[path.stem] = {t for t in targets if (PACKAGE / f"{t}.py").exists()}
    return graph


def test_no_function_is_longer_than_80_lines():
    assert long_functions() == []


def test_no_import_cycles():
    graph = module_imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_library_modules_do_not_import_the_cli_or_the_package_init():
    for module, targets in module_imports().items():
        if not module.startswith("cli") and module != "__main__":
            assert not {t for t in targets if t.startswith("cli")}, module
        assert "__init__" not in targets, module
