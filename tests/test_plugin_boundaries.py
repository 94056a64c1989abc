"""Plugins use the host's public contract only: no private attribute, method or name of the host.

The private names of the host are read from its source (``_x`` methods and ``self._x``
attributes of ``anoplug/``); a plugin may use its own private names, never the host's.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = sorted(ROOT.glob("plugins/*/src"))


def _private_names(files: list[Path]) -> set[str]:
    names: set[str] = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_") \
                    and not node.name.startswith("__"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


HOST_PRIVATE = _private_names(sorted((ROOT / "anoplug").rglob("*.py")))


def test_the_issue_grep_finds_nothing() -> None:
    pattern = re.compile(r"(?<!\w)_fitted\b|(?<!\w)_generate\b")  # not the public is_fitted
    hits = [f"{f.relative_to(ROOT)}:{k + 1}" for src in PLUGIN_SOURCES for f in src.rglob("*.py")
            for k, line in enumerate(f.read_text(encoding="utf-8").splitlines()) if pattern.search(line)]
    assert not hits, f"plugins reach into the host's private fit/generate state: {hits}"


@pytest.mark.parametrize("src", PLUGIN_SOURCES, ids=lambda p: p.parent.name)
def test_no_plugin_touches_a_private_name_of_the_host(src: Path) -> None:
    files = sorted(src.rglob("*.py"))
    own = _private_names(files)
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in HOST_PRIVATE and node.attr not in own:
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno} .{node.attr}")
            host_module = isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "anoplug"
            if host_module:
                bad += [f"{f.relative_to(ROOT)}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name.startswith("_")]
    assert not bad, f"{src.parent.name} uses private names of the host: {bad}"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The boundary check is not vacuous: a plugin line that touches ``_replace_trusted`` is caught."""
    assert "_replace_trusted" in HOST_PRIVATE and "_fitted" in HOST_PRIVATE
    f = tmp_path / "bad.py"
    f.write_text("def go(batch):\n    return batch._replace_trusted(image=batch.image)\n")
    node = next(n for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Attribute))
    assert node.attr in HOST_PRIVATE and node.attr not in _private_names([f])
