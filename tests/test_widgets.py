"""Headless tests of the widget explorers: set widget values in code, check the output changed.

The model side of ipywidgets needs no frontend, so the explorer's behaviour (controls,
cache, debounce, errors, hook) is tested here; tests/test_browser.py checks the rendering.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import ipywidgets as W
import pytest
import torch
from pydantic import Field

from anoplug import EvaluatorSpec, GeneratorSpec, hookimpl
from anoplug.evaluator import Evaluator, Metric, Report
from anoplug.generator import FeatureGenerator, Generator, Paper
from anoplug.params import ParamError, Params
from anoplug.seeding import resolve_seeds, rngs_for
from anoplug.testing import make_toy_batch
from anoplug.types import Batch
from anoplug.widgets import LRUCache, compare, controls_for, debounce, explore


class SquareParams(Params):
    side: float = Field(0.3, ge=0.05, le=0.6, description="square side as a fraction of the image")
    brightness: float = Field(0.9, ge=0.0, le=1.0, description="value painted into the square")
    count: int = Field(1, ge=1, le=4, description="squares per image")
    channel: Literal["all", "red", "green"] = Field("all", description="which channels are painted")
    fail: bool = Field(False, description="raise inside apply (to test error display)")
    note: str = Field("", description="free text, unused")


class Square(Generator):
    """A tiny procedural generator: bright squares at random places."""

    name = "test-square"
    title = "Test squares"
    category = "cutpaste"
    paper = Paper("none", year=2024, url="https://example.org")
    Params = SquareParams

    def sample(self, batch, rngs):
        return [{"xy": torch.rand(self.params.count, 2, generator=r)} for r in rngs]

    def apply(self, batch, samples, **conditions):
        if self.params.fail:
            raise RuntimeError("deliberate failure from apply")
        h, w = batch.size
        side = max(1, int(self.params.side * h))
        mask = torch.zeros(len(batch), 1, h, w)
        for i, s in enumerate(samples):  # a few boxes per image, not a per-pixel loop
            for x, y in (s["xy"] * torch.tensor([w - side, h - side])).long().tolist():
                mask[i, :, y:y + side, x:x + side] = 1
        chans = {"all": [0, 1, 2], "red": [0], "green": [1]}[self.params.channel]
        paint = batch.image.clone()
        paint[:, chans] = self.params.brightness
        image = batch.image * (1 - mask) + paint * mask
        return Batch(image=image, mask=mask, label=["square"] * len(batch), meta=[dict(m) for m in batch.meta])


class SquarePlugin:
    @hookimpl
    def anoplug_generators(self):
        return [GeneratorSpec("test-square", Square, title="Test squares", category="cutpaste")]


@pytest.fixture
def square(tmp_plugin):
    tmp_plugin(SquarePlugin(), "test-square-plugin")
    return make_toy_batch(2, 32)


def test_controls_follow_the_params_model():
    c = controls_for(SquareParams, fixed={"note": "x"})
    assert isinstance(c["side"], W.FloatSlider) and (c["side"].min, c["side"].max) == (0.05, 0.6)
    assert isinstance(c["count"], W.IntSlider) and (c["count"].min, c["count"].max) == (1, 4)
    assert isinstance(c["channel"], W.Dropdown) and list(c["channel"].options) == ["all", "red", "green"]
    assert isinstance(c["fail"], W.Checkbox)
    assert "note" not in c  # fixed: no control
    assert not c["side"].continuous_update and c["side"].value == 0.3


def test_slider_change_updates_output_and_cache(square):
    ex = explore("test-square", square, debounce_s=0)
    first_png, first = ex.png, ex.result
    assert first_png.startswith(b"\x89PNG") and ex.image.value == first_png
    assert ex.calls == 1 and ex.error is None
    ex.controls["side"].value = 0.5  # what a user's slider drag does
    assert ex.calls == 2 and ex.png != first_png
    assert float(ex.result.mask.mean()) > float(first.mask.mean())
    ex.controls["side"].value = 0.3  # back: served from the cache
    assert ex.calls == 2 and ex.png == first_png
    assert "cache" in ex.status.value


def test_seed_and_choice_change_output(square):
    ex = explore("test-square", square, debounce_s=0)
    before = ex.result.image.clone()
    ex.seed.value = 7
    assert not torch.equal(ex.result.image, before)
    ex.controls["channel"].value = "red"
    red = ex.result.image[:, 0][ex.result.mask[:, 0] > 0]
    green = ex.result.image[:, 1][ex.result.mask[:, 0] > 0]
    assert torch.allclose(red, torch.tensor(0.9)) and not torch.allclose(green, torch.tensor(0.9))


def test_fixed_params_and_unknown_fixed(square):
    ex = explore("test-square", square, brightness=0.1, debounce_s=0)
    assert "brightness" not in ex.controls
    assert ex.result.meta[0]["params"]["brightness"] == 0.1
    with pytest.raises(ParamError, match="no_such"):
        explore("test-square", square, no_such=1)


def test_error_is_shown_in_the_ui_and_reraised_in_strict_mode(square, monkeypatch):
    monkeypatch.delenv("ANOPLUG_STRICT", raising=False)
    ex = explore("test-square", square, debounce_s=0)
    good_png = ex.png
    ex.controls["fail"].value = True
    assert isinstance(ex.error, RuntimeError) and "deliberate failure" in ex.status.value
    assert ex.png == good_png  # last good picture stays
    ex.controls["fail"].value = False
    assert ex.error is None
    monkeypatch.setenv("ANOPLUG_STRICT", "1")
    with pytest.raises(RuntimeError, match="deliberate"):
        ex.controls["fail"].value = True


def test_manual_mode_waits_for_the_button(square):
    ex = explore("test-square", square, manual=True)
    assert ex.button is not None and ex.calls == 1
    ex.controls["side"].value = 0.55
    assert ex.calls == 1  # no live update
    ex.button.click()
    assert ex.calls == 2 and ex.result.meta[0]["params"]["side"] == 0.55


def test_learned_method_by_name_says_fit_first(tmp_plugin):
    class Learned(Square):
        name = "test-learned"
        requires = Square.requires.__class__(fit=True)

    class P:
        @hookimpl
        def anoplug_generators(self):
            return [GeneratorSpec("test-learned", Learned, title="t", category="speed", needs_fit=True)]

    tmp_plugin(P(), "learned-plugin")
    with pytest.raises(ValueError, match="fit or load it first"):
        explore("test-learned")
    g = Learned(brightness=0.2)
    g._fitted = True
    ex = explore(g, make_toy_batch(1, 32), show=["side"])  # a fitted instance is explored as is, with a Generate button
    assert ex.button is not None and ex.result is not None and g.params.side == 0.3
    ex.controls["side"].value = 0.5
    ex.button.click()
    assert ex.result.meta[0]["params"]["side"] == 0.5 and g.params.side == 0.3  # the user's instance is untouched
    assert ex.result.meta[0]["params"]["brightness"] == 0.2  # parameters without a control keep the instance's value


def test_compare_one_row_per_method(square):
    cmp = compare(["test-square", ("test-square", {"side": 0.55, "channel": "green"})], square)
    assert list(cmp.results) == ["test-square", "test-square#1"]
    assert cmp.png.startswith(b"\x89PNG")
    png = cmp.png
    cmp.seed.value = 3
    assert cmp.png != png and cmp.error is None


def test_debounce_collapses_a_burst():
    calls = []
    fire = debounce(0.05)(lambda: calls.append(1))

    async def burst():
        for _ in range(5):
            fire()
        await asyncio.sleep(0.15)

    asyncio.run(burst())
    assert calls == [1]
    fire()  # no running loop: immediate
    assert calls == [1, 1]


def test_lru_cache_evicts_oldest():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1
    c.put("c", 3)
    assert "b" not in c and "a" in c and len(c) == 2


class NoiseParams(Params):
    std: float = Field(0.5, ge=0.0, le=2.0, description="noise std inside the box")


class BoxNoise(FeatureGenerator):
    """A tiny feature-level generator: Gaussian noise in a random box of the feature map."""

    name = "test-boxnoise"
    title = "Test box noise"
    category = "feature"
    paper = Paper("none", year=2024, url="https://example.org")
    Params = NoiseParams

    def generate_features(self, features, *, generator=None, seed=None, seeds=None):
        rngs = rngs_for(resolve_seeds(len(features), generator=generator, seed=seed, seeds=seeds))
        b, c, h, w = features.shape
        mask = torch.zeros(b, 1, h, w)
        noise = torch.stack([torch.randn(c, h, w, generator=r) for r in rngs])
        for i, r in enumerate(rngs):
            y, x = (int(v) for v in torch.randint(0, h // 2, (2,), generator=r))
            mask[i, :, y:y + h // 2, x:x + w // 2] = 1
        return features + self.params.std * noise * mask, mask


def test_feature_level_generator_gets_a_preview(tmp_plugin):
    class P:
        @hookimpl
        def anoplug_generators(self):
            return [GeneratorSpec("test-boxnoise", BoxNoise, title="t", category="feature")]

    tmp_plugin(P(), "boxnoise-plugin")
    ex = explore("test-boxnoise", make_toy_batch(2, 32))
    assert ex.button is not None and ex.error is None  # feature-level: Generate button
    assert all(lbl.startswith("max|d|") for lbl in ex.result.label) and float(ex.result.mask.mean()) == pytest.approx(0.25)
    png = ex.png
    ex.seed.value = 5
    ex.button.click()
    assert ex.png != png


def test_show_limits_the_controls(square):
    ex = explore("test-square", square, show=["side"], debounce_s=0)
    assert list(ex.controls) == ["side"]
    with pytest.raises(ParamError, match="nope"):
        explore("test-square", square, show=["nope"])


class AreaEvaluator(Evaluator):
    """Mean anomalous area: enough to see that the explorer scores every new result."""

    name = "test-area"
    title = "area"

    def evaluate(self, generated, *, normals=None, real=None):
        assert normals is not None and len(normals) == len(generated)
        return Report(self.name, {"area": Metric(float(generated.mask.mean()), False, "mean mask area")})


def test_explorer_scores_results_with_evaluators(square, tmp_plugin):
    class P:
        @hookimpl
        def anoplug_evaluators(self):
            return [EvaluatorSpec("test-area", AreaEvaluator, title="area", kind="per_sample")]

    tmp_plugin(P(), "area-plugin")
    ex = explore("test-square", square, evaluators=["test-area"], debounce_s=0)
    small = ex.reports["test-area"]["area"]
    assert "area" in ex.status.value
    ex.controls["side"].value = 0.55
    assert ex.reports["test-area"]["area"] > small
    ex.controls["side"].value = 0.3  # cached results keep their reports
    assert ex.reports["test-area"]["area"] == small
