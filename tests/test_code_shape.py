"""The package's shape: short functions, no import cycles between its modules, and layers that import
downward only (see docs/architecture.md, "How the code is organised").

Every module of every subpackage is read, and every import in it counts: relative or absolute, at module
level, inside a function, or under ``if TYPE_CHECKING:``. A deferred import cannot form a cycle at import
time, but it still ties the two modules together, so it may not point upward or close a circle either.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deft_clean"
README = PACKAGE.parent / "docs" / "architecture.md"
# Longest function or method body, docstring included. The signature is not counted: ruff format writes a long
# one a parameter a line (a Typer command has dozens), and packing it with `# fmt: skip` is not allowed.
MAX_LINES = 80

# The layers, bottom first (docs/architecture.md): a module imports its own folder and the
# folders below it, never one above. The package's __init__ and __main__ sit on top of all of them.
LAYERS = ("run", "inputs", "models", "outputs", "detecting", "training", "cli")
TOP = ("deft_clean", "deft_clean.__main__", "deft_clean.testing")  # testing: the toy CLIP, above all layers


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package and its subpackages."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path, tree: ast.AST) -> set[str]:
    """Every dotted name an import statement anywhere in ``tree`` reaches: ``from .x import y`` gives
    ``<package>.x.y`` (y may be a module or a name inside x), ``import a.b`` gives ``a.b``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def module_imports() -> dict[str, set[str]]:
    """Package module -> the package modules it imports (the longest existing module of each name)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path, ast.parse(path.read_text(), str(path))):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def layer(module: str) -> int:
    if module in TOP:
        return len(LAYERS)
    folder = module.split(".")[1]
    return LAYERS.index(folder)


def cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    found = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def long_functions() -> list[str]:
    found = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.body[0].lineno + 1  # the body, docstring included
            if length > MAX_LINES:
                found.append(f"{module}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_80_lines():
    assert long_functions() == []


def test_no_formatter_opt_outs():
    """Nothing is packed under the line cap with `# fmt: skip`/`# fmt: off` (CI runs `ruff format --check`)."""
    packed = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for folder in ("deft_clean", "tests", "benchmarks", "examples")
        for path in sorted((PACKAGE.parent / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if line.rstrip().endswith(("# fmt: skip", "# fmt: off"))
    ]
    assert packed == []


def test_every_module_lives_in_a_layer():
    stray = [m for m in module_files() if m not in TOP and m.split(".")[1] not in LAYERS]
    assert stray == [], f"modules outside the layers {LAYERS}: {stray}"


def test_no_import_cycles():
    assert cycles(module_imports()) == []


def test_layers_import_downward_only():
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(module_imports().items())
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_library_modules_do_not_import_the_cli_or_the_package_init():
    for module, targets in module_imports().items():
        if layer(module) < LAYERS.index("cli"):
            assert not [t for t in targets if layer(t) >= LAYERS.index("cli")], module
        assert "deft_clean" not in targets, module


def test_the_readme_names_the_same_layers():
    chain = " -> ".join(f"`{name}`" for name in reversed(LAYERS))
    assert chain in README.read_text(), f"docs/architecture.md should state the layers as {chain}"


def test_every_kind_of_import_is_seen():
    """The finder is not fooled by deferred, type-only, absolute or parent-relative imports."""
    source = """
from typing import TYPE_CHECKING
import deft_clean.run.files
from ..inputs import listing
if TYPE_CHECKING:
    from .results import Results
def later():
    from .summary import rate
    from deft_clean.run import errors as e
"""
    names = imported_names("deft_clean.outputs.export", PACKAGE / "outputs" / "export.py", ast.parse(source))
    assert {
        "deft_clean.run.files",
        "deft_clean.inputs.listing",
        "deft_clean.outputs.results.Results",
        "deft_clean.outputs.summary.rate",
        "deft_clean.run.errors",
    } <= names
