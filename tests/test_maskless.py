"""Mask-less generators (``provides_mask = False``): no ground-truth file, ``"mask": null``, refused where masks are read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import Field

from anoplug.data.inputs import InMemoryDataset
from anoplug.data.writer import write_generated
from anoplug.evaluator import Evaluator, MissingMaskError, Report, maskless_samples
from anoplug.generator import Generator, Paper, Samples
from anoplug.params import Params
from anoplug.testing import GeneratorConformance, make_toy_batch


class MP(Params):
    mask: Literal["none", "box"] = Field("none", description="'none': image-level label only; 'box': a real mask")


class Maskless(Generator):
    """Darkens the whole image and says "defective" without saying where: no mask (unless ``mask='box'``)."""

    name, title, category = "test-maskless", "mask-less", "cutpaste"
    paper = Paper("test", year=2025, url="https://example.org")
    Params = MP
    provides_mask = False

    def mask_provided(self) -> bool:
        return self.params.mask == "box"

    def sample(self, batch, rngs):
        return Samples({"gain": float(0.5 + 0.3 * torch.rand(1, generator=g))} for g in rngs)

    def apply(self, batch, samples):
        out = batch.clone()
        gain = torch.tensor([s["gain"] for s in samples]).view(-1, 1, 1, 1)
        out.image = batch.image * gain
        out.mask = torch.zeros_like(batch.image[:, :1])
        if self.params.mask == "box":
            out.mask[..., 4:12, 4:12] = 1
        out.label = ["defective"] * len(batch)
        return out


class Undeclared(Maskless):
    """The same output without the declaration: what the host must not accept as a masked method."""

    name = "test-undeclared"
    provides_mask = True

    def mask_provided(self) -> bool:
        return True


class TestMasklessKit(GeneratorConformance):
    generator_class = Maskless


def _recs(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def test_the_declaration_reaches_meta_and_a_contradicting_mask_is_refused() -> None:
    b = make_toy_batch(2, 16)
    out = Maskless().generate(b, seed=0)
    assert [m["provides_mask"] for m in out.meta] == [False, False] and maskless_samples(out) == [0, 1]
    boxed = Maskless(mask="box").generate(b, seed=0)  # per instance: this configuration has a real mask
    assert "provides_mask" not in boxed.meta[0] and maskless_samples(boxed) == []

    class Liar(Maskless):
        name = "test-liar"

        def mask_provided(self) -> bool:
            return False

    with pytest.raises(RuntimeError, match="provides no mask .* but returned a non-empty one"):
        Liar(mask="box").generate(b, seed=0)


def test_the_kit_fails_a_maskless_method_that_does_not_declare_it() -> None:
    kit, b = TestMasklessKit(), make_toy_batch(4, 16)
    gen = Undeclared()
    with pytest.raises(AssertionError, match="label 'defective' vs mask"):
        kit.test_output_contract(gen, b, gen.generate(b, seed=0))


def test_writer_writes_no_mask_file_and_records_null(tmp_path: Path) -> None:
    src = InMemoryDataset(make_toy_batch(3, 16), category="toy")
    s = write_generated(Maskless(), src, tmp_path / "a", n=3, batch_size=2, progress=False, n_train=0)
    root = s.manifest.parent
    recs = _recs(root)
    assert [(r["label"], r["mask"], r["provides_mask"]) for r in recs] == [("defective", None, False)] * 3
    assert all((root / r["image"]).is_file() for r in recs)
    assert not (root / "ground_truth").exists(), "an empty mask file would claim 'no defect pixels'"
    again = write_generated(Maskless(), src, tmp_path / "a", n=3, batch_size=2, progress=False, n_train=0)
    assert (again.written, again.skipped) == (0, 3)  # the resume check accepts a null mask for such samples
    boxed = write_generated(Maskless(mask="box"), src, tmp_path / "b", n=1, progress=False, n_train=0)
    rec = _recs(boxed.manifest.parent)[0]
    assert rec["mask"] == "ground_truth/defective/000000_mask.png" and "provides_mask" not in rec


def test_export_keeps_the_mask_absent(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from anoplug.data.export import export_hf

    s = write_generated(Maskless(), InMemoryDataset(make_toy_batch(2, 16), category="toy"), tmp_path / "a", n=2,
                        progress=False, n_train=0)
    export_hf(s.manifest.parent, tmp_path / "hf")
    table = pq.read_table(next((tmp_path / "hf").rglob("test-*.parquet"))).to_pylist()
    assert [r["mask"] for r in table] == [None, None] and [r["label"] for r in table] == ["defective"] * 2


class MaskArea(Evaluator):
    name = "test-mask-area"
    needs_masks = True

    def evaluate(self, generated, *, normals=None, real=None):
        return Report(self.name, details={"area": float(generated.mask.mean())})


class ImageLevel(Evaluator):
    name = "test-image-level"

    def evaluate(self, generated, *, normals=None, real=None):
        return Report(self.name, details={"n": len(generated)})


def test_evaluators_that_read_masks_refuse_maskless_samples() -> None:
    b = make_toy_batch(2, 16)
    out = Maskless().generate(b, seed=0)
    with pytest.raises(MissingMaskError, match="test-mask-area reads defect masks, but 2 of 2 samples have none"):
        MaskArea().evaluate(out)
    assert ImageLevel().evaluate(out).details == {"n": 2}  # an image-level evaluator is fine
    assert MaskArea().evaluate(Maskless(mask="box").generate(b, seed=0)).details["area"] > 0

    class Refined(MaskArea):  # a subclass overriding evaluate is checked too
        name = "test-refined"

        def evaluate(self, generated, *, normals=None, real=None):
            return Report(self.name)

    with pytest.raises(MissingMaskError, match="test-refined"):
        Refined().evaluate(out)


def test_info_says_a_method_has_no_masks(capsys) -> None:
    from anoplug.cli import main

    assert main(["info", "glass-ddpm"]) == 0
    assert "masks:     none by default" in capsys.readouterr().out
    assert main(["info", "draem"]) == 0
    assert "masks:" not in capsys.readouterr().out


def test_torch_dataset_refuses_a_maskless_generator_in_tuple_mode() -> None:
    """A training loop reads the tuple's mask as the label map: an all-zero mask would teach "no defect pixels"."""
    from anoplug.torchdata import SyntheticAnomalyDataset

    src = make_toy_batch(n=4, size=32)
    with pytest.raises(ValueError, match="provides no masks"):
        SyntheticAnomalyDataset(src, Maskless(), p=1.0)
    ds = SyntheticAnomalyDataset(src, Maskless(), p=1.0, output="dict")
    assert ds[0]["meta"]["generator"]["provides_mask"] is False
    assert len(SyntheticAnomalyDataset(src, Maskless(mask="box"), p=1.0)[0]) == 3  # a derived mask is a mask
