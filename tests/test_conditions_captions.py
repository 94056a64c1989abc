"""``conditions.reference_captions``: K captions per sample, aligned with ``references``, moved with the batch."""

from __future__ import annotations

import pytest
import torch

from anoplug.conditions import ConditionError, Conditions
from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import Params
from anoplug.testing import condition_variants, make_toy_batch
from anoplug.types import Batch


def _refs(n: int, k: int, size: int = 8) -> torch.Tensor:
    return torch.rand(n, k, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kw, needle", [
    ({"reference_captions": [["a"], ["b"]]}, "reference_captions given without conditions.references"),
    ({"references": _refs(2, 2), "reference_captions": [["a", "b"]]}, "one list per sample: 1 for 2"),
    ({"references": _refs(2, 2), "reference_captions": [["a", "b"], ["c"]]}, "reference_captions[1] must be a list of 2"),
    ({"references": _refs(2, 1), "reference_captions": [["a"], [3]]}, "reference_captions[1]"),
    ({"references": _refs(2, 1), "reference_captions": ["a", "b"]}, "reference_captions[0]"),
    ({"references": _refs(2, 1), "reference_captions": "a"}, "one list per sample"),
])
def test_captions_are_validated_naming_the_field(kw, needle) -> None:
    with pytest.raises(ConditionError) as ei:
        make_toy_batch(2, 8).with_conditions(**kw)
    assert needle in str(ei.value), str(ei.value)


def test_captions_are_sliced_concatenated_cloned_and_moved_per_sample() -> None:
    b = make_toy_batch(3, 8)
    caps = [["s0a", "s0b"], ["s1a", "s1b"], ["s2a", "s2b"]]
    refs = _refs(3, 2)
    c = b.with_conditions(references=refs, reference_captions=caps)
    part = c[[2, 0]]
    assert part.conditions.reference_captions == [["s2a", "s2b"], ["s0a", "s0b"]]  # a list per sample, not flattened
    assert torch.equal(part.conditions.references[0], refs[2])
    both = Batch.cat([c[[0]], c[[1, 2]]])
    assert both.conditions.reference_captions == caps  # concatenated by sample, still K each
    both.validate()
    cl = c.clone().conditions.reference_captions
    assert cl == caps and cl[0] is not c.conditions.reference_captions[0]  # a copy: editing it leaves c alone
    cl[0][0] = "changed"
    assert c.conditions.reference_captions[0][0] == "s0a"
    assert c.to("cpu").conditions.reference_captions == caps
    with pytest.raises(ConditionError, match="conditions.reference_captions is set in some batches only"):
        Conditions.cat([c.conditions.select([0]), c.conditions.replace(reference_captions=None).select([1])])
    assert "reference_captions" in c.conditions.present()


class Captioned(Generator):
    """Brightens each sample by the length of its first reference caption: the caption is the condition."""

    name, title, category = "test-captioned", "captioned", "cutpaste"
    paper = Paper("test", year=2025, url="https://example.org")
    Params = Params
    requires = Requires(accepts=("references", "reference_masks", "reference_captions"))

    def sample(self, batch, rngs):
        return Samples({} for _ in rngs)

    def apply(self, batch, samples):
        out = batch.clone()
        caps = batch.conditions.reference_captions or [[""]] * len(batch)
        gain = torch.tensor([len(row[0]) / 100 for row in caps]).view(-1, 1, 1, 1)
        out.image = (batch.image + gain).clamp(0, 1)
        return out


def test_a_method_declares_captions_and_a_method_that_does_not_refuses_them() -> None:
    b = make_toy_batch(2, 16)
    va, vb = condition_variants("reference_captions", b)  # the kit's variants differ only in the captions
    assert torch.equal(va["references"], vb["references"]) and va["reference_captions"] != vb["reference_captions"]
    a, c = (Captioned().generate(b.with_conditions(**v), seed=0) for v in (va, vb))
    assert not torch.equal(a.image, c.image)

    class RefsOnly(Captioned):
        name = "test-refs-only"
        requires = Requires(accepts=("references", "reference_masks"))

    with pytest.raises(ConditionError, match="does not use conditions.reference_captions"):
        RefsOnly().generate(b.with_conditions(**va), seed=0)
