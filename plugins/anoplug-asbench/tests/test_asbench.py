"""anoplug-asbench: the hybrid generator passes the conformance kit and really mixes its members."""

from __future__ import annotations

import pytest

from anoplug.params import ParamError
from anoplug.testing import GeneratorConformance, make_toy_batch


class TestHybridConformance(GeneratorConformance):
    generator_name = "hybrid"
    entry_module = "anoplug_asbench.plugin"
    params = {"members": "cutpaste,cutpaste-scar"}
    bad_params = {"members": "cutpaste"}


def test_members_each_make_a_share_and_match_their_own_output() -> None:
    import anoplug

    hyb = anoplug.get_generator("hybrid", members="cutpaste,cutpaste-scar")
    batch = make_toy_batch(16, 32)
    out = hyb.generate(batch, seed=0)
    chosen = [m["sample"]["member"] for m in out.meta]
    assert set(chosen) == {"cutpaste", "cutpaste-scar"}
    # Sample i is exactly what its member makes alone with the drawn member seed.
    i = chosen.index("cutpaste-scar")
    alone = anoplug.get_generator("cutpaste-scar").generate(batch[[i]], seeds=[out.meta[i]["sample"]["member_seed"]])
    assert alone.image.numpy().tobytes() == out.image[i:i + 1].numpy().tobytes()


def test_bad_members_are_named() -> None:
    import anoplug

    with pytest.raises(ParamError, match="members"):
        anoplug.get_generator("hybrid", members="cutpaste,cutpaste")
    with pytest.raises(LookupError, match="no-such"):
        anoplug.get_generator("hybrid", members="cutpaste,no-such")


def test_members_with_different_extras_mix() -> None:
    """NSA emits a soft mask, CutPaste does not: the mixture keeps only what all members emit."""
    import anoplug

    out = anoplug.get_generator("hybrid", members="cutpaste,nsa").generate(make_toy_batch(8, 64), seed=0)
    assert {m["sample"]["member"] for m in out.meta} == {"cutpaste", "nsa"}
    assert "soft_mask" not in out.extras
