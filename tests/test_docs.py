"""Every hookspec is documented under its exact signature (datasette's rule)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from anoplug import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin_hooks.md"


def _signature(fn) -> str:
    sig = inspect.signature(fn)
    params = ", ".join(p.name + (f": {p.annotation}" if p.annotation is not inspect._empty and p.annotation != "Any" else "")
                       for p in sig.parameters.values())
    return f"{fn.__name__}({params})"


def test_every_hook_is_documented_with_its_signature():
    headings = re.findall(r"^### `([^`]+)`", DOC.read_text(), flags=re.M)
    documented = {h.split("(")[0]: h for h in headings}
    specs = [f for n, f in vars(hookspecs).items() if n.startswith("anoplug_") and callable(f)]
    assert len(specs) >= 4
    for fn in specs:
        assert fn.__name__ in documented, f"hook {fn.__name__} is not documented in {DOC.name}"
        doc_params = documented[fn.__name__].split("(", 1)[1].split(")")[0]
        names = [p.split(":")[0].strip() for p in doc_params.split(",") if p.strip()]
        assert names == list(inspect.signature(fn).parameters), f"{fn.__name__}: documented {names}"
    stale = set(documented) - {f.__name__ for f in specs}
    assert not stale, f"documented hooks that do not exist: {stale}"
