"""``tools/mask_precision_table.py``: the cross-plugin table's core on two tiny fake generators at 32².

One fake keeps every pixel outside its mask, the other also darkens a border strip it leaves out of its
mask: the table must list both, give the leaky one leakage > 0 and the tidy one 0, and list
feature-level / weightless learned / mask-less generators as skipped instead of measuring them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from anoplug import GeneratorSpec, hookimpl
from anoplug.generator import FeatureGenerator, Generator, Paper, Requires

REPO = Path(__file__).resolve().parents[1]


def _load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("mask_precision_table", REPO / "tools" / "mask_precision_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class TidySquare(Generator):
    """Darkens an 8-px square and masks exactly it."""

    name = "tidy-square"
    title = "tidy square"
    paper = Paper("test generator", "", 2026, "https://example.invalid")
    preserves_outside_mask = True

    def sample(self, batch: Any, rngs: Any) -> list[dict]:
        h = batch.image.shape[-1]
        return [{"y": int(torch.randint(4, h - 12, (1,), generator=g)),
                 "x": int(torch.randint(4, h - 12, (1,), generator=g))} for g in rngs]

    def apply(self, batch: Any, samples: list[dict]) -> Any:
        out = batch.clone()
        for i, p in enumerate(samples):
            out.mask[i, :, p["y"]:p["y"] + 8, p["x"]:p["x"] + 8] = 1
        out.image = (out.image - 0.3 * out.mask).clamp(0, 1)
        out.label = ["dark"] * len(out)
        return out


class LeakySquare(TidySquare):
    """The same square, plus a darkened top row that its mask leaves out: a mask that lies."""

    name = "leaky-square"
    preserves_outside_mask = False

    def apply(self, batch: Any, samples: list[dict]) -> Any:
        out = super().apply(batch, samples)
        out.image[:, :, 0] = (out.image[:, :, 0] - 0.3).clamp(0, 1)
        return out


class NoMask(TidySquare):
    """Changes the image but returns empty masks, as an image-level-label generator does."""

    name = "no-mask"

    def apply(self, batch: Any, samples: list[dict]) -> Any:
        out = super().apply(batch, samples)
        out.mask.zero_()
        return out


class DeclaredMaskless(NoMask):
    """The same, declared: ``provides_mask = False`` (an unconditional defect DDPM)."""

    name = "declared-maskless"
    provides_mask = False


class FakeFeature(FeatureGenerator):
    name = "fake-feature"
    paper = Paper("test generator")


class WeightlessLearned(TidySquare):
    name = "weightless-learned"
    requires = Requires(fit=True)


class _Plugin:
    @hookimpl
    def anoplug_generators(self) -> list[GeneratorSpec]:
        return [GeneratorSpec("tidy-square", TidySquare), GeneratorSpec("leaky-square", LeakySquare),
                GeneratorSpec("fake-feature", FakeFeature, category="feature"), GeneratorSpec("no-mask", NoMask),
                GeneratorSpec("declared-maskless", DeclaredMaskless),
                GeneratorSpec("weightless-learned", WeightlessLearned, needs_fit=True)]


@pytest.fixture
def tool(tmp_plugin: Any) -> Any:
    import anoplug_metrics.plugin

    tmp_plugin(_Plugin(), "fake")
    tmp_plugin(anoplug_metrics.plugin, "metrics")
    return _load_tool()


def test_table_rows_and_leakage(tool: Any) -> None:
    """Fails if leakage is not measured against the source normal, or a generator's row goes missing."""
    res = tool.build_table(["tidy-square", "leaky-square"], size=32, n=4, seed=0, log=None)
    rows = {r["generator"]: r for r in res["rows"]}
    assert set(rows) == {"tidy-square", "leaky-square"} and all(r["status"] == "ok" for r in rows.values())
    assert rows["tidy-square"]["metrics"]["leakage"] == 0.0
    assert rows["tidy-square"]["metrics"]["coverage"] == 1.0
    # the top row (32 px of 32² minus the square) changed outside the mask: 32 / (1024 - 64) of the outside
    assert rows["leaky-square"]["metrics"]["leakage"] == pytest.approx(32 / (1024 - 64), abs=1e-3)
    assert rows["leaky-square"]["anomalous"] == 4 and rows["leaky-square"]["data"] == "toy:metal"
    md = tool.markdown(res)
    assert "| `leaky-square` |" in md and "| `tidy-square` |" in md and "kept (declared" in md


def test_every_registered_generator_is_listed(tool: Any) -> None:
    """Fails if the default list is hard-coded (newcomers must appear) or skips are dropped silently."""
    res = tool.build_table(None, size=32, n=2, seed=0, log=None)
    rows = {r["generator"]: r for r in res["rows"]}
    assert {"tidy-square", "leaky-square", "fake-feature", "weightless-learned", "no-mask"} <= set(rows)
    assert rows["no-mask"]["status"] == "skipped" and "no non-empty mask" in rows["no-mask"]["reason"]
    assert rows["declared-maskless"]["status"] == "skipped" and "provides no mask" in rows["declared-maskless"]["reason"]
    assert rows["fake-feature"]["status"] == "skipped" and "feature-level" in rows["fake-feature"]["reason"]
    assert rows["weightless-learned"]["status"] == "skipped" and "no weights" in rows["weightless-learned"]["reason"]
    assert "- `fake-feature`: feature-level" in tool.markdown(res)
