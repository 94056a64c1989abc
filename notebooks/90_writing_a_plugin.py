# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 90 · Writing a plugin
#
# **Objectives.** Write a new anomaly generator in one cell, register it with
# `anoplug.register`, check it with the same conformance kit every published plugin runs,
# and explore its parameters with the automatic widget explorer.
#
# **Runtime budget.** About 15 s on a laptop CPU (smoke mode: under 15 s). No GPU, no download.
#
# The pattern every generator follows (see `ARCHITECTURE.md`): **`sample`** draws every
# random choice of sample *i* from its own `torch.Generator` (so a sample never depends on
# the batch it is in), and **`apply`** turns those choices into pixels for the whole batch
# at once, with no per-pixel Python loop.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("ANOPLUG_SMOKE", "0") not in ("", "0")
N_IMAGES = 2 if SMOKE else 4  # images shown in the explorer
SIZE = 64 if SMOKE else 128  # side of the images in pixels
SEED = 0

# %% [markdown]
# ## 1. The generator: straight scratches
#
# A scratch is a thin line segment whose pixels get darker. The parameters are a pydantic
# model: each field has a default, a range and a one-line description, which drive
# validation, the CLI (`anoplug generate -p width=3`) and the sliders below.

# %%
from typing import Literal

import torch
from pydantic import Field

import anoplug
from anoplug import GeneratorSpec, hookimpl
from anoplug.generator import Generator, Paper
from anoplug.params import Params
from anoplug.types import Batch


class ScratchParams(Params):
    length: float = Field(0.5, ge=0.05, le=1.0, description="scratch length as a fraction of the image side")
    width: float = Field(2.0, ge=1.0, le=8.0, description="scratch width in pixels")
    darkness: float = Field(0.6, ge=0.0, le=1.0, description="how much darker the scratch is (1 = black)")
    colour: Literal["dark", "bright"] = Field("dark", description="dark (groove) or bright (reflective) scratch")


class Scratch(Generator):
    """Straight scratches: a toy method written for this notebook."""

    name = "scratch"
    title = "Straight scratches (tutorial)"
    category = "cutpaste"
    paper = Paper("anoplug tutorial: writing a plugin", venue="docs", year=2026, url="https://example.org/anoplug")
    Params = ScratchParams
    preserves_outside_mask = True  # the conformance kit then checks it

    def sample(self, batch, rngs):
        # every random draw of sample i comes from rngs[i]: a centre and an angle
        return [{"centre": torch.rand(2, generator=r), "angle": float(torch.rand((), generator=r)) * torch.pi}
                for r in rngs]

    def apply(self, batch, samples):
        h, w = batch.size
        centre = torch.stack([s["centre"] for s in samples]) * torch.tensor([w, h])  # [B,2] in pixels
        angle = torch.tensor([s["angle"] for s in samples])
        half = 0.5 * self.params.length * min(h, w)
        direction = torch.stack([angle.cos(), angle.sin()], 1)  # [B,2]
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        rel = torch.stack([xx, yy], -1)[None] - centre[:, None, None]  # [B,H,W,2]
        along = (rel * direction[:, None, None]).sum(-1).clamp(-half, half)  # projection onto the segment
        nearest = centre[:, None, None] + along[..., None] * direction[:, None, None]
        dist = (torch.stack([xx, yy], -1)[None] - nearest).norm(dim=-1)  # [B,H,W]
        mask = (dist <= max(self.params.width / 2, 0.75)).float()[:, None]
        target = batch.image * (1 - self.params.darkness) if self.params.colour == "dark" else \
            batch.image + (1 - batch.image) * self.params.darkness
        image = torch.where(mask.bool(), target, batch.image)  # outside the mask: bit-identical
        labels = ["scratch" if bool(m.any()) else "good" for m in mask]
        return Batch(image=image, mask=mask, label=labels, meta=[dict(m) for m in batch.meta])


# %% [markdown]
# ## 2. Register it
#
# A plugin is any object with `@hookimpl` functions. Installed plugins point an entry point
# of group `anoplug` at a module; in a notebook, `anoplug.register` does the same for an
# object defined right here. The `GeneratorSpec` names the class (a lazy
# `"package.module:Class"` string in a real plugin, so listing plugins never imports torch).

# %%
class ScratchPlugin:
    @hookimpl
    def anoplug_generators(self):
        return [GeneratorSpec("scratch", Scratch, title=Scratch.title, category="cutpaste")]


if "scratch" in anoplug.list_generators():  # re-running the notebook: replace the old registration
    anoplug.unregister("scratch-tutorial")
anoplug.register(ScratchPlugin(), "scratch-tutorial")
print(anoplug.list_generators("cutpaste"))

# %% [markdown]
# ## 3. Run it once and check the result (a plain cell: errors here fail CI)

# %%
from anoplug.ops import as_batch

images = as_batch("toy:fabric", n=N_IMAGES, size=SIZE)  # the embedded toy data: no download
gen = anoplug.get_generator("scratch", width=3.0)
out = gen.generate(images, seed=SEED)

assert out.image.shape == images.image.shape and out.mask.shape == (len(images), 1, SIZE, SIZE)
assert all(label == "scratch" for label in out.label)
outside = (out.mask == 0).expand_as(out.image)
assert torch.equal(out.image[outside], images.image[outside]), "pixels outside the scratch changed"
assert torch.equal(gen.generate(images, seed=SEED).image, out.image), "same seed, different bytes"
print("anomalous pixels per image:", out.mask.flatten(1).sum(1).tolist())
print("sampled parameters of image 0:", out.meta[0]["sample"])

# The draw records are the recipe: replayed (here with a different seed on purpose), they
# give the same bytes. `anoplug generate --replay MANIFEST` does this for a written dataset.
replayed = gen.generate(images, seeds=[7] * len(images), samples=out.samples)
assert torch.equal(replayed.image, out.image), "the records did not hold every draw"

# %% [markdown]
# ## 4. The conformance kit
#
# Every plugin's tests subclass `anoplug.testing.GeneratorConformance`: shapes and dtypes,
# labels that agree with masks, determinism under a seed, per-sample seeding independent of
# the batch, parameter errors that name the field, save/load round trip, no network. Here
# we write that test file and run pytest on it in this kernel (it finds `scratch` through
# the registry we just added it to).

# %%
import pathlib
import tempfile
import textwrap

import pytest

test_dir = pathlib.Path(tempfile.mkdtemp(prefix="anoplug-tutorial-"))
(test_dir / "test_scratch.py").write_text(textwrap.dedent("""
    from anoplug.testing import GeneratorConformance

    class TestScratch(GeneratorConformance):
        generator_name = "scratch"
        params = {"length": 0.4}
        bad_params = {"length": 1.5, "width": 0.0, "colour": "purple"}
        image_size = 32
"""))
exit_code = pytest.main(["-q", "--capture=sys", "-p", "no:cacheprovider", "--rootdir", str(test_dir), str(test_dir)])
assert exit_code == 0, f"conformance kit failed (pytest exit code {exit_code})"

# %% [markdown]
# ## 5. Explore it
#
# `anoplug.explore` builds the controls from `ScratchParams`: sliders for the bounded numbers,
# a dropdown for the choice, a seed box. Release a slider and the grid (input | generated |
# mask | overlay) updates; results are cached by (parameters, seed).

# %%
explorer = anoplug.explore("scratch", images, seed=SEED)
assert explorer.error is None and explorer.result is not None
explorer

# %% [markdown]
# ## What a paper would report vs what you see here
#
# This generator has no paper: it exists to show the plugin contract. What to notice:
#
# - **Determinism.** The kit regenerated the same seed and compared *bytes*; it also
#   generated image 1 alone and got the same scratch as inside the batch. That holds because
#   `sample` draws only from `rngs[i]` — draw from the global RNG and the kit fails.
# - **Masks are exact.** `preserves_outside_mask = True` made the kit check that no pixel
#   outside the mask changed. Methods that blend or smooth (DRAEM, NSA) leave it `False`.
# - **Conditions** a method is asked for per sample (a target mask, boxes, a prompt, a
#   paired source image) ride on `batch.conditions` and are declared in
#   `Requires(conditions=..., accepts=...)`; the kit checks that each one changes the output.
# - **Learned methods** subclass `anoplug.learned.LearnedGenerator` and write only `build`,
#   `optimizers` and `training_step`; `anoplug new-plugin NAME --learned` renders one that
#   passes `LearnedGeneratorConformance` (fit, resume from a checkpoint, save/load).
# - **Making it installable** is a folder `plugins/anoplug-scratch/` with a `pyproject.toml`
#   whose `[project.entry-points.anoplug]` points at a `plugin.py` holding `ScratchPlugin`'s
#   hook as a module-level function, with `factory="anoplug_scratch.scratch:Scratch"`; the
#   folders under `plugins/` of this repository are complete examples.
