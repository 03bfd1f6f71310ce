"""Check the package's layout: no import circle, no private name imported across modules, sizes.

    .venv/bin/python scripts/check_layout.py [--graph]

Every ``import`` of a package module counts, wherever it stands (module level, inside a function, under
``TYPE_CHECKING``): a lazy import is still a dependency. Also checked: modules of at most 600 lines, classes
of at most 500, functions of at most 60; Quart imported only by the Quart glue (extension.py, app_commands.py), the
core never needing it; Alembic imported at module level only by review.py (itself imported lazily), so that
``import async_migrate`` and the no-op startup check never load it. ``--graph`` prints each module with the
package modules it imports, lowest layer first. Exit status 1 when anything is off.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "async_migrate"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 500
MAX_FUNCTION_LINES = 60
QUART_MODULES = {"extension", "app_commands"}
ALEMBIC_AT_MODULE_LEVEL = {"review"}


def package_imports(tree: ast.Module, module: str) -> Iterator[tuple[str, list[str], int]]:
    """``(imported module, names taken from it, line)`` for each import of a package module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 1 and node.module:  # from .x import a, b
                yield node.module.split(".")[0], names, node.lineno
            elif node.level == 1:  # from . import x, y
                for name in names:
                    yield name, [], node.lineno
            elif node.module and node.module.startswith("async_migrate."):
                yield node.module.split(".")[1], names, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("async_migrate."):
                    yield alias.name.split(".")[1], [], node.lineno


def third_party_at_module_level(tree: ast.Module) -> Iterator[tuple[str, int]]:
    """Top-level imported distributions (outside functions and ``if TYPE_CHECKING``)."""
    for node in tree.body:
        if isinstance(node, ast.Import):
            yield from ((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def sizes(tree: ast.Module) -> Iterator[tuple[str, str, int, int]]:
    """``(kind, name, lines, first line)`` of every class and function."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            yield "class", node.name, node.end_lineno - node.lineno + 1, node.lineno  # type: ignore[operator]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield "function", node.name, node.end_lineno - node.lineno + 1, node.lineno  # type: ignore[operator]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def layers(graph: dict[str, set[str]]) -> list[str]:
    """The modules, each after every module it imports (for an acyclic graph)."""
    placed: list[str] = []
    remaining = dict(graph)
    while remaining:
        ready = sorted(m for m, deps in remaining.items() if deps <= set(placed))
        if not ready:  # a circle: reported elsewhere
            ready = sorted(remaining)
        placed += ready
        for module in ready:
            del remaining[module]
    return placed


def main(argv: list[str]) -> int:
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        module = path.stem
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, str(path))
        where = f"async_migrate/{path.name}"
        graph[module] = set()
        for imported, names, line in package_imports(tree, module):
            if imported != module:
                graph[module].add(imported)
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and imported != module:
                problems.append(f"{where}:{line}: imports private {', '.join(private)} from {imported}")
        for top, line in third_party_at_module_level(tree):
            if top == "quart" and module not in QUART_MODULES:
                problems.append(f"{where}:{line}: imports Quart; only {sorted(QUART_MODULES)} may")
            if top == "alembic" and module not in ALEMBIC_AT_MODULE_LEVEL:
                problems.append(
                    f"{where}:{line}: imports Alembic at module level; import it where it is used"
                )
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            problems.append(f"{where}: {lines} lines (at most {MAX_MODULE_LINES})")
        for kind, name, length, line in sizes(tree):
            limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
            if length > limit:
                problems.append(f"{where}:{line}: {kind} {name} has {length} lines (at most {limit})")
    graph.pop("__init__", None)  # the package's front door imports what it re-exports
    for cycle in find_cycles(graph):
        problems.append(f"import circle: {' <-> '.join(cycle)}")
    # Quart must not leak into the core through a module that imports a Quart module.
    for module in graph:
        if module not in QUART_MODULES and graph[module] & QUART_MODULES:
            names = ", ".join(sorted(graph[module] & QUART_MODULES))
            problems.append(f"async_migrate/{module}.py imports the Quart glue ({names})")
    if "--graph" in argv:
        for module in layers(graph):
            print(f"{module:22} <- {', '.join(sorted(graph[module])) or '(nothing of ours)'}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"layout ok: {len(graph)} modules, no import circle")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
