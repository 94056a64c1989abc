"""``anoplug new-plugin NAME``: a ready-to-fill plugin distribution for third-party authors.

The rendered plugin registers one generator, passes the conformance kit as generated,
and shows the sample/apply split every method follows (as a working toy method to
replace); ``--learned`` renders a learned method on :class:`anoplug.learned.LearnedGenerator`.
Both templates are rendered and tested in anoplug's own test suite.
"""

from __future__ import annotations

import json
import keyword
import re
import unicodedata
from pathlib import Path

from anoplug.specs import CATEGORIES

_PYPROJECT = '''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "anoplug-{name}"
version = "0.1.0"
description = {description_toml}
readme = "README.md"
requires-python = ">=3.10"
keywords = ["anoplug-plugin"]
dependencies = ["anoplug>=0.1,<2"]

[project.entry-points.anoplug]
{name_toml} = "anoplug_{mod}.plugin"

[tool.setuptools.packages.find]
where = ["src"]
'''

_PLUGIN = '''"""Entry point: registers the generator; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec({name_py}, "anoplug_{mod}.method:{cls}", title={title_py}, category={category_py})]
'''

_METHOD = '''"""{title_doc}.

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
    name = {name_py}
    title = {title_py}
    category = {category_py}
    paper = Paper({title_py}, venue="", year=2025, url="https://example.org/your-paper")
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
            out.label[i] = {name_py}
        shade = torch.tensor([s["shade"] for s in samples])[:, None, None, None]
        out.image = torch.where(out.mask.bool(), shade.expand_as(out.image), out.image)
        return out
'''

_LEARNED = '''"""{title_doc}.

Replace this docstring with the paper's mechanism, step by step, and the code below with
the method. This template is a working learned method to start from: it learns the colour
of real defects (``fit``) and paints it into a drawn or given region (``generate``).

1. ``build``: create the modules (shapes may depend on the data), prepare the training data.
2. ``optimizers`` / ``training_step``: the host's ``fit`` runs the loop, checkpoints, resumes.
3. ``sample``: every random choice per sample, from the sample's own generator.
4. ``apply``: pure and batched; reads per-sample conditions from ``batch.conditions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from anoplug.generator import Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import Batch


class {cls}Params(Params):
    fit_steps: int = Field(50, ge=1, le=100_000, description="training steps")
    lr: float = Field(0.05, gt=0.0, le=1.0, description="Adam learning rate")
    batch_size: int = Field(256, ge=1, le=65_536, description="defect pixels per training step")
    size: float = Field(0.25, gt=0.0, le=1.0, description="side of the drawn square region as a fraction of the image")
    seed: int = Field(0, ge=0, description="seed of the weight init and the training draws")


class Painter(nn.Module):
    """The learned part: one defect colour (a stand-in for your generator network)."""

    def __init__(self) -> None:
        super().__init__()
        self.colour = nn.Parameter(torch.full((3,), 0.5))


class {cls}(LearnedGenerator):
    name = {name_py}
    title = {title_py}
    category = {category_py}
    paper = Paper({title_py}, venue="", year=2025, url="https://example.org/your-paper")
    Params = {cls}Params
    requires = Requires(fit=True, anomalies=True, accepts=("target_mask",))
    preserves_outside_mask = True

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.painter: Painter | None = None

    # -- 1. modules and data ------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> torch.Tensor:
        if anomalies is None or not bool(anomalies.mask.any()):
            raise ValueError(f"{{self.name}}.fit needs real anomalies with masks")
        self.painter = Painter()
        inside = anomalies.mask.expand_as(anomalies.image) > 0
        return anomalies.image.permute(0, 2, 3, 1)[inside.permute(0, 2, 3, 1)].view(-1, 3)  # defect pixels

    def modules(self) -> dict[str, nn.Module]:
        return {{"painter": self.painter}} if self.painter is not None else {{}}

    def restore_config(self, config: dict[str, Any]) -> None:
        self.painter = Painter()  # load() fills in the weights

    # -- 2. training ----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {{"painter": torch.optim.Adam(self.painter.parameters(), lr=self.params.lr)}}

    def training_step(self, data: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(data), (self.params.batch_size,), generator=generator)
        return F.mse_loss(self.painter.colour.expand(len(idx), -1), data[idx])

    # -- 3. sampling ------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        out = Samples()
        for rng in rngs:
            yx = torch.rand(2, generator=rng).tolist()
            out.append({{"y": yx[0], "x": yx[1], "strength": 0.6 + 0.4 * float(torch.rand(1, generator=rng))}})
        return out

    # -- 4. applying ------------------------------------------------------------------------------
    def apply(self, batch: Batch, samples: Samples) -> Batch:
        h, w = batch.size
        mask = batch.conditions.target_mask
        if mask is None:  # no target region given: a drawn square per sample
            side = max(1, int(self.params.size * min(h, w)))
            ys, xs = torch.arange(h)[:, None], torch.arange(w)[None, :]
            boxes = []
            for s in samples:
                y0, x0 = int(s["y"] * (h - side)), int(s["x"] * (w - side))
                boxes.append(((ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)).float())
            mask = torch.stack(boxes)[:, None]
        strength = torch.tensor([s["strength"] for s in samples])[:, None, None, None]
        with torch.no_grad():
            colour = self.painter.colour.clamp(0, 1).view(1, 3, 1, 1)
        painted = torch.lerp(batch.image, colour.expand_as(batch.image), strength)
        out = batch.clone()
        out.image = torch.lerp(batch.image, painted, mask)  # 0/1 weights: outside the mask bit-exact
        out.mask = mask.clone()
        out.label = [{name_py} if bool(m.any()) else "good" for m in mask]
        return out
'''

_LEARNED_TEST = '''"""Conformance of the learned {name_doc} generator (anoplug's kit: fit, resume, save/load, conditions)."""

from anoplug.testing import LearnedGeneratorConformance
from anoplug_{mod}.method import {cls}


class Test{cls}(LearnedGeneratorConformance):
    generator_class = {cls}
    params = {{"fit_steps": 5}}
    bad_params = {{"lr": 0.0, "size": 2.0}}
    entry_module = "anoplug_{mod}.plugin"
    replay_needs_seeds = False  # every draw is in the sample records
'''

_TEST = '''"""Conformance of the {name_doc} generator (anoplug's kit)."""

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


def _literal(text: str) -> str:
    """``text`` as a double-quoted string literal valid in Python and in TOML.

    JSON escapes only the quote, the backslash and control characters, with escapes both
    languages read the same way; titles with control characters are refused before this.
    """
    return json.dumps(text, ensure_ascii=False)


def _doc(text: str) -> str:
    """``text`` safe inside a triple-quoted docstring (backslashes and quotes escaped)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def new_plugin(name: str, directory: str | Path = "plugins", *, title: str = "", category: str = "cutpaste",
               learned: bool = False) -> Path:
    """Write ``<directory>/anoplug-<name>/`` and return its path; refuses to overwrite.

    ``learned=True`` renders a learned method (``LearnedGenerator``: build, optimisers,
    training step) and its learned-method conformance test instead of a procedural one.
    """
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
    title = title or f"{cls} anomaly generator"
    bad = [c for c in title if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")]
    if bad:
        raise ValueError(f"plugin title {title!r} must be one line of printable text (it holds {bad[0]!r})")
    fmt = {"name": name, "mod": mod, "cls": cls, "title": title, "category": category,
           # every value lands in Python and TOML source: rendered as literals, never pasted between quotes
           "name_py": _literal(name), "title_py": _literal(title), "category_py": _literal(category),
           "name_toml": _literal(name), "description_toml": _literal(f"{title} for anoplug"),
           "title_doc": _doc(title), "name_doc": _doc(name)}
    files = {
        "pyproject.toml": _PYPROJECT, f"src/anoplug_{mod}/__init__.py": '"""{title_doc}."""\n',
        f"src/anoplug_{mod}/plugin.py": _PLUGIN.replace("category={category_py})", "category={category_py}, needs_fit=True)")
        if learned else _PLUGIN,
        f"src/anoplug_{mod}/method.py": _LEARNED if learned else _METHOD,
        f"tests/test_{mod}.py": _LEARNED_TEST if learned else _TEST, "README.md": _README,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fmt))
    return root
