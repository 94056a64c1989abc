"""``anoplug new-plugin NAME``: a ready-to-fill plugin distribution for third-party authors.

The rendered plugin registers one generator, passes the conformance kit as generated,
and shows the sample/apply split every method follows (as a working toy method to
replace). The template is rendered and tested in anoplug's own test suite.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from anoplug.specs import CATEGORIES

_PYPROJECT = '''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "anoplug-{name}"
version = "0.1.0"
description = "{title} for anoplug"
readme = "README.md"
requires-python = ">=3.10"
keywords = ["anoplug-plugin"]
dependencies = ["anoplug>=0.1,<2"]

[project.entry-points.anoplug]
{name} = "anoplug_{mod}.plugin"

[tool.setuptools.packages.find]
where = ["src"]
'''

_PLUGIN = '''"""Entry point: registers the generator; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("{name}", "anoplug_{mod}.method:{cls}", title="{title}", category="{category}")]
'''

_METHOD = '''"""{title}.

Replace this docstring with the paper's mechanism, step by step, and the code below
with the method. Keep the split: ``sample`` draws every random choice from each
sample's own generator; ``apply`` is pure and batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from anoplug.generator import Generator, Paper, Samples
from anoplug.params import Params
from anoplug.types import Batch


class {cls}Params(Params):
    probability: float = Field(1.0, ge=0.0, le=1.0, description="chance that a sample gets an anomaly")
    size: float = Field(0.2, gt=0.0, le=1.0, description="side of the square defect as a fraction of the image")


class {cls}(Generator):
    name = "{name}"
    title = "{title}"
    category = "{category}"
    paper = Paper("{title}", venue="", year=2025, url="https://example.org/your-paper")
    Params = {cls}Params
    preserves_outside_mask = True

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        out = Samples()
        for rng in rngs:
            anomalous = bool(torch.rand(1, generator=rng) < self.params.probability)
            yx = torch.rand(2, generator=rng).tolist()
            out.append({{"anomalous": anomalous, "y": yx[0], "x": yx[1], "shade": float(torch.rand(1, generator=rng))}})
        return out

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        out = batch.clone()
        h, w = batch.size
        side = max(1, int(self.params.size * min(h, w)))
        ys = torch.arange(h)[:, None]
        xs = torch.arange(w)[None, :]
        for i, s in enumerate(samples):  # one vectorised mask per sample (no per-pixel loop)
            if not s["anomalous"]:
                continue
            y0, x0 = int(s["y"] * (h - side)), int(s["x"] * (w - side))
            box = ((ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)).float()
            out.mask[i, 0] = box
            out.label[i] = "{name}"
        shade = torch.tensor([s["shade"] for s in samples])[:, None, None, None]
        out.image = torch.where(out.mask.bool(), shade.expand_as(out.image), out.image)
        return out
'''

_TEST = '''"""Conformance of the {name} generator (anoplug's kit)."""

from anoplug.testing import GeneratorConformance
from anoplug_{mod}.method import {cls}


class Test{cls}(GeneratorConformance):
    generator_class = {cls}
    bad_params = {{"probability": 2.0, "size": 0.0}}
    entry_module = "anoplug_{mod}.plugin"
'''

_README = '''# anoplug-{name}

{title}: an [anoplug](https://github.com/anoplug/anoplug) plugin.

- **Paper:** title, venue, year, link.
- **Mechanism in five lines:** …
- **Parameters:** see `anoplug info {name}`.
- **Faithful / scaled down:** say exactly what differs from the official code and why.

Install for development: `pip install -e .`; test: `pytest`.
'''


def new_plugin(name: str, directory: str | Path = "plugins", *, title: str = "", category: str = "cutpaste") -> Path:
    """Write ``<directory>/anoplug-<name>/`` and return its path; refuses to overwrite."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ValueError(f"plugin name {name!r} must be lowercase letters, digits and '-', starting with a letter")
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    mod = name.replace("-", "_")
    if keyword.iskeyword(mod):
        raise ValueError(f"plugin name {name!r} is a Python keyword")
    cls = "".join(part.capitalize() for part in name.split("-"))
    root = Path(directory) / f"anoplug-{name}"
    if root.exists():
        raise FileExistsError(f"{root} already exists; not overwriting")
    fmt = {"name": name, "mod": mod, "cls": cls, "title": title or f"{cls} anomaly generator", "category": category}
    files = {
        "pyproject.toml": _PYPROJECT, f"src/anoplug_{mod}/__init__.py": '"""{title}."""\n',
        f"src/anoplug_{mod}/plugin.py": _PLUGIN, f"src/anoplug_{mod}/method.py": _METHOD,
        f"tests/test_{mod}.py": _TEST, "README.md": _README,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fmt))
    return root
