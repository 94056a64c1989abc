"""Helpers that install throw-away plugin distributions on a temporary sys.path entry."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_dist(root: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> Path:
    """Write ``<module>.py`` and a ``<dist>-0.1.dist-info`` with an ``anoplug`` entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[anoplug]\n{ep_name or module} = {module}\n")
    return root


TOY_GENERATOR = '''
from anoplug import GeneratorSpec, hookimpl

@hookimpl
def anoplug_generators():
    return [GeneratorSpec("{name}", "{module}_impl:Gen", title="toy", category="cutpaste")]
'''
