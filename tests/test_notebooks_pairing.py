"""The reviewed source of each notebook is its jupytext ``py:percent`` pair; the ``.ipynb`` must match it.

Fails when the two drift (someone edited one and not the other), when an ``.ipynb`` is
committed with outputs or widget state, or when a notebook lacks the parts every notebook
promises (objectives, runtime budget, a papermill ``parameters`` cell reading
``ANOPLUG_SMOKE``, a README row). Fix drift with ``jupytext --sync notebooks/*.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PY = sorted(p for p in NOTEBOOKS.glob("*.py") if p.name != "conftest.py")
IPYNB = sorted(NOTEBOOKS.glob("*.ipynb"))


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_every_notebook_has_its_pair():
    assert PY, f"no notebooks in {NOTEBOOKS}"
    assert _ids(PY) == _ids(IPYNB), "every notebooks/X.py needs notebooks/X.ipynb and vice versa"


@pytest.mark.parametrize("py", PY, ids=_ids(PY))
def test_pair_has_the_same_cells(py: Path):
    source = jupytext.read(py)
    stored = json.loads(py.with_suffix(".ipynb").read_text())
    assert stored["metadata"].get("jupytext", {}).get("formats") == "ipynb,py:percent"
    assert stored["metadata"]["kernelspec"]["name"] == "python3"
    a = [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in source.cells]
    b = [(c["cell_type"], "".join(c["source"]).strip(), sorted(c.get("metadata", {}).get("tags", []))) for c in stored["cells"]]
    assert len(a) == len(b), f"{py.name}: {len(a)} cells in the .py, {len(b)} in the .ipynb — run jupytext --sync"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, f"{py.name}: cell {i} differs between the .py and the .ipynb — run jupytext --sync"


@pytest.mark.parametrize("nb", IPYNB, ids=_ids(IPYNB))
def test_ipynb_is_committed_without_outputs(nb: Path):
    stored = json.loads(nb.read_text())
    assert "widgets" not in stored["metadata"], f"{nb.name}: widget state committed"
    for i, c in enumerate(stored["cells"]):
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, f"{nb.name}: cell {i} has outputs"


@pytest.mark.parametrize("py", PY, ids=_ids(PY))
def test_notebook_has_the_promised_parts(py: Path):
    nb = jupytext.read(py)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Objectives" in text and "Runtime budget" in text, f"{py.name}: objectives and runtime budget missing"
    assert re.search(r"reports? vs\.? what you see", text.lower()), \
        f"{py.name}: the 'what the paper reports vs what you see' section is missing"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "ANOPLUG_SMOKE" in params[0].source, f"{py.name}: one parameters cell reading ANOPLUG_SMOKE"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "assert " in code, f"{py.name}: a plain cell must assert on the result (widget errors never fail CI)"
    for c in nb.cells:  # skips need a reason
        for tag in c.metadata.get("tags", []):
            assert tag != "nbval-skip" or "reason" in c.source.lower(), f"{py.name}: nbval-skip without a reason"


def test_readme_lists_every_notebook():
    readme = (NOTEBOOKS / "README.md").read_text()
    for p in PY:
        assert p.stem in readme, f"notebooks/README.md does not list {p.stem}"
