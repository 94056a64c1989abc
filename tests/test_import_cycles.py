"""No import cycles among the host's modules, not even through a function-level (lazy) import.

A lazy import inside a function hides a cycle from Python at import time but not from the
reader: the two modules still depend on each other. The graph here is built from every
``import`` / ``from ... import`` statement anywhere in a module (top level, functions,
``TYPE_CHECKING`` blocks), resolved to the anoplug module it names: ``from anoplug.data
import toy`` is an edge to ``anoplug.data.toy``, ``from anoplug.data import open_dataset`` one
to ``anoplug.data``. The implicit import of a parent package (``anoplug.data`` before
``anoplug.data.toy``) is not an edge: a package's ``__init__`` importing its own submodules is
not a cycle. ``importlib.import_module`` strings (the lazy names of ``anoplug/__init__``) are
not statements and are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "anoplug"
#: Cycles tolerated, as sorted module tuples, each with its reason. Keep it empty.
ALLOWED: dict[tuple[str, ...], str] = {}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The anoplug module ``name`` lives in (itself, or the nearest enclosing module)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """anoplug module -> the anoplug modules it imports anywhere in its source."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(_resolve(a.name, mods) for a in node.names if a.name.split(".")[0] == "anoplug")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "anoplug":
                    continue
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    targets.add(sub if sub in mods else _resolve(source, mods))
        graph[mod] = {t for t in targets if t is not None and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "anoplug.data.toy_render" in graph["anoplug.data.toy_defects"]
    assert "anoplug.registry" in graph["anoplug.data"]  # open_dataset imports the registry inside the function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_among_host_modules() -> None:
    graph = import_graph()
    bad = []
    for comp in cycles(graph):
        if tuple(comp) in ALLOWED:
            continue
        edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
        bad.append(f"{' <-> '.join(comp)} ({'; '.join(edges)})")
    assert not bad, "import cycles (move the shared piece to a lower module): " + " | ".join(bad)
