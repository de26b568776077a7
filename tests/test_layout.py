"""The house's structure (issue 21, "Done when"), read from the source with ``ast``: nothing is imported.

Import circles count module-level imports only: the import statements that run when a module is imported
(at top level, and inside top-level ``if``/``try``/``with`` blocks and class bodies), not those inside
functions, which run when called and cannot tie modules at import time; ``if TYPE_CHECKING:`` blocks are
skipped too. ``import pkg.mod`` and ``from pkg import mod`` are arrows to the module ``pkg.mod``;
``from pkg import name`` (``name`` not a module) is an arrow to ``pkg`` (its ``__init__.py``); relative
imports are resolved. What ``das_core`` may import (never ``jobs``, ``bench`` or ``ray``) counts every
import, in functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("das_core", "jobs", "bench")
FORBIDDEN_IN_DAS_CORE = ("jobs", "bench", "ray")
MAX_LINES = 400


def module_files() -> dict[str, Path]:
    """Every module of ``PACKAGES`` by dotted name (a package by its own name, for its ``__init__.py``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(tree: ast.Module, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree`` that run: ``if TYPE_CHECKING:`` bodies skipped (annotations only), and
    with ``module_level`` also functions and lambdas (those that run at import time); otherwise the imports
    inside functions count too, since a function that imports a module depends on it as much."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if not module_level:
                todo.extend(ast.iter_child_nodes(node))
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute name ``node`` imports from, inside ``module``."""
    if node.level == 0:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str) -> str | None:
    """The longest prefix of the dotted ``name`` that is one of ``MODULES``."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def imported_names(module: str, module_level: bool) -> list[tuple[str, int]]:
    """(absolute name, line) of everything ``module`` imports: a module where the name is one."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    names = []
    for node in import_nodes(tree, module_level):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
            continue
        source = _absolute(module, node)
        for alias in node.names:
            inner = f"{source}.{alias.name}"
            names.append((inner if inner in MODULES else source, node.lineno))
    return names


def import_graph(module_level: bool = True) -> dict[str, dict[str, int]]:
    """Arrows between ``MODULES``: importer -> {imported module: line of the first import}; module-level
    imports only unless ``module_level`` is false."""
    graph: dict[str, dict[str, int]] = {}
    for module in MODULES:
        arrows = graph.setdefault(module, {})
        for name, line in imported_names(module, module_level):
            target = _known(name)
            if target is not None and target != module:
                arrows.setdefault(target, line)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(circle: list[str], graph: dict[str, dict[str, int]]) -> str:
    """One circle as its modules and the imports that tie them (file:line -> module)."""
    ties = [f"    {MODULES[a].relative_to(ROOT)}:{graph[a][b]} imports {b}"
            for a in circle for b in sorted(graph[a]) if b in circle]
    return "circle: " + " <-> ".join(circle) + "\n" + "\n".join(ties)


def test_the_walk_finds_circles_and_their_ties():
    graph = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7, "d": 1}, "d": {}, "e": {"e": 2}}
    assert circles(graph) == [["a", "b", "c"]]


def test_module_level_imports_are_those_run_at_import_time():
    tree = ast.parse("import a\nfrom b import x\nif TYPE_CHECKING:\n    import c\nelse:\n    import d\n"
                     "try:\n    import e\nexcept ImportError:\n    pass\n"
                     "class K:\n    import f\n\n    def m(self):\n        import g\n"
                     "def h():\n    from i import y\n")

    def names(nodes):
        return sorted(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in nodes)

    assert names(import_nodes(tree, module_level=True)) == ["a", "b", "d", "e", "f"]
    assert names(import_nodes(tree, module_level=False)) == ["a", "b", "d", "e", "f", "g", "i"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles(package):
    """Counting the imports inside functions too: a lazy import hides a circle from Python, not from a reader."""
    graph = import_graph(module_level=False)
    inside = [c for c in circles(graph) if any(m == package or m.startswith(package + ".") for m in c)]
    assert not inside, f"{len(inside)} import circle(s) in {package}:\n" + "\n".join(
        describe(c, graph) for c in inside)


def test_das_core_imports_no_jobs_bench_or_ray():
    found = [f"{MODULES[module].relative_to(ROOT)}:{line} imports {name}"
             for module in MODULES if module.split(".")[0] == "das_core"
             for name, line in imported_names(module, module_level=False)
             if name.split(".")[0] in FORBIDDEN_IN_DAS_CORE]
    assert not found, "das_core must not import " + ", ".join(FORBIDDEN_IN_DAS_CORE) + ":\n" + "\n".join(found)


def test_no_das_core_module_over_400_lines():
    sizes = {path.relative_to(ROOT): len(path.read_text().splitlines())
             for name, path in MODULES.items() if name.split(".")[0] == "das_core"}
    over = sorted((n, str(p)) for p, n in sizes.items() if n > MAX_LINES)
    assert not over, f"modules in das_core over {MAX_LINES} lines:\n" + "\n".join(
        f"    {p}: {n} lines" for n, p in reversed(over))


def test_every_das_core_package_has_a_docstring():
    folders = sorted({path.parent for path in (ROOT / "das_core").rglob("*.py") if "__pycache__" not in path.parts})
    missing = []
    for folder in folders:
        init = folder / "__init__.py"
        if not init.exists():
            missing.append(f"    {folder.relative_to(ROOT)}/: no __init__.py")
        elif not ast.get_docstring(ast.parse(init.read_text())):
            missing.append(f"    {init.relative_to(ROOT)}: no docstring")
    assert not missing, "every package under das_core needs an __init__.py with a docstring:\n" + "\n".join(missing)
