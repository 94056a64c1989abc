"""The conformance kit must catch broken generators (a kit that cannot fail is a defect)."""

from __future__ import annotations

import torch  # noqa: F401  (imported before pytester snapshots sys.modules; torch cannot be re-imported)

GOOD_AND_BAD = '''
import torch
from pydantic import Field
from anoplug.generator import Generator, Paper
from anoplug.params import Params
from anoplug.testing import GeneratorConformance


class P(Params):
    strength: float = Field(0.5, ge=0, le=1, description="how strong")


class Honest(Generator):
    name = "honest"; title = "honest"; category = "cutpaste"; Params = P
    paper = Paper("t", year=2020, url="https://example.org")
    preserves_outside_mask = True

    def sample(self, batch, rngs):
        return [{"y": int(torch.randint(0, 48, (1,), generator=r))} for r in rngs]

    def apply(self, batch, samples, **kw):
        out = batch.clone()
        for i, s in enumerate(samples):
            out.mask[i, :, s["y"]:s["y"] + 8, 8:24] = 1
            out.label[i] = "box"
        out.image = torch.where(out.mask.bool(), out.image * (1 - self.params.strength), out.image)
        return out


class GlobalRng(Honest):
    """Draws from the global RNG instead of the per-sample generator."""
    name = "globalrng"

    def sample(self, batch, rngs):
        return [{"y": int(torch.randint(0, 48, (1,)))} for _ in rngs]


class Leaky(Honest):
    """Claims to keep pixels outside the mask but changes them."""
    name = "leaky"

    def apply(self, batch, samples, **kw):
        out = super().apply(batch, samples)
        out.image = (out.image * 0.99).clamp(0, 1)
        return out


class TestHonest(GeneratorConformance):
    generator_class = Honest
    bad_params = {"strength": 2.0}


class TestGlobalRng(GeneratorConformance):
    generator_class = GlobalRng


class TestLeaky(GeneratorConformance):
    generator_class = Leaky
'''


def test_kit_passes_honest_and_fails_broken_generators(pytester):
    pytester.makepyfile(test_toys=GOOD_AND_BAD)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    outcomes = {r.nodeid.split("::", 1)[1]: r.outcome for r in
                result.reprec.getreports("pytest_runtest_logreport") if r.when == "call"}
    honest = {k: v for k, v in outcomes.items() if k.startswith("TestHonest::")}
    assert sum(v == "passed" for v in honest.values()) >= 10, honest
    assert all(v in ("passed", "skipped") for v in honest.values()), honest
    assert honest["TestHonest::test_entry_module_does_not_import_torch"] == "skipped"  # none declared
    assert outcomes["TestGlobalRng::test_same_seed_same_bytes"] == "failed"
    assert outcomes["TestLeaky::test_outside_mask_unchanged"] == "failed"
