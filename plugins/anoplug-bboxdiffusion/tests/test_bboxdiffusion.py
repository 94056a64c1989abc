"""BBox-guided diffusion: conformance on a tiny UNet, plus the paper's encodings."""

from __future__ import annotations

import math

import pytest
import torch

from anoplug.testing import GeneratorConformance, make_toy_batch
from anoplug.types import Batch

pytest.importorskip("diffusers")

from anoplug_bboxdiffusion import bboxdiffusion as BB  # noqa: E402

FAST = {"model": "tiny", "sample_steps": 8, "lr": 1e-3, "batch_size": 4}


def toy_anomalies(size: int = 32) -> Batch:
    b = make_toy_batch(4, size, seed=3)
    b.mask[:2, :, 4:12, 6:20] = 1
    b.mask[2:, :, 16:28, 16:24] = 1
    b.image = torch.where(b.mask.bool().expand_as(b.image), torch.zeros_like(b.image), b.image)
    b.label = ["scratch", "scratch", "stain", "stain"]
    return b


class TestBBoxDiffusionConformance(GeneratorConformance):
    generator_name = "bboxdiffusion"
    generator_class = BB.BBoxDiffusion
    params = FAST
    bad_params = {"sample_steps": 0, "model": "huge", "lr": -1.0}
    entry_module = "anoplug_bboxdiffusion.plugin"
    image_size = 32

    def make_generator(self):
        return BB.BBoxDiffusion(**FAST).fit(make_toy_batch(2, 32), toy_anomalies(), steps=4)


def test_analog_bits_round_trip_msb_first():
    ids = torch.arange(6).view(1, 1, 2, 3)
    bits = BB.to_bits(ids, 3)
    assert bits.shape == (1, 3, 2, 3) and set(bits.unique().tolist()) == {-1.0, 1.0}
    assert bits[0, :, 0, 1].tolist() == [-1.0, -1.0, 1.0]  # 1 = 001, most significant bit first
    assert torch.equal(BB.from_bits(bits, 6), ids)
    assert BB.from_bits(BB.to_bits(torch.full((1, 1, 1, 1), 7), 3), 6).item() == 0  # unknown id → background
    assert BB.n_bits(6) == 3 and BB.n_bits(2) == 1 and BB.n_bits(3) == 2


def test_basd_sign_normalisation_and_overlaps():
    d = BB.basd([(1, 0.25, 0.25, 0.75, 0.75)], 32, 32)[0]
    assert d[16, 16] > 0 and d[0, 0] < 0 and d[16, 0] < 0
    assert d.abs().max() <= 1.0
    assert d[16, 16] == pytest.approx(7.5 / math.hypot(32, 32))  # pixel centre 16.5 is 7.5 px from the border at 24
    assert torch.equal(BB.basd([], 8, 8), torch.full((1, 8, 8), -1.0))
    two = BB.basd([(1, 0.0, 0.0, 0.5, 0.5), (2, 0.25, 0.25, 1.0, 1.0)], 32, 32)[0]
    near = BB.basd([(1, 0.0, 0.0, 0.5, 0.5)], 32, 32)[0]
    assert two[10, 10] <= near[10, 10]  # inside both: the smaller positive distance
    cm = BB.class_map([(1, 0.0, 0.0, 0.5, 0.5), (2, 0.25, 0.25, 1.0, 1.0)], 8, 8)[0]
    assert cm[0, 0] == 1 and cm[3, 3] == 2 and cm[7, 0] == 0


def test_boxes_from_mask_components():
    m = torch.zeros(1, 32, 32)
    m[0, 2:6, 3:9] = 1
    m[0, 20:30, 20:24] = 1
    boxes = BB.boxes_from_mask(m, 2)
    assert sorted(boxes) == sorted([(2, 3 / 32, 2 / 32, 9 / 32, 6 / 32), (2, 20 / 32, 20 / 32, 24 / 32, 30 / 32)])


def test_condition_drives_the_output_and_boxes_are_checked():
    gen = BB.BBoxDiffusion(**FAST).fit(None, toy_anomalies(), steps=3)
    b = make_toy_batch(1, 32)
    a = gen.generate(b, seed=0, boxes=[[("scratch", 0.1, 0.1, 0.4, 0.4)]])
    c = gen.generate(b, seed=0, boxes=[[("stain", 0.5, 0.5, 0.9, 0.9)]])
    assert (a.image - c.image).abs().max() > 1e-4, "the box condition does not reach the network"
    assert a.meta[0]["sample"]["boxes"] == [[1, 0.1, 0.1, 0.4, 0.4]]
    assert a.extras["class_map"].shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        gen.generate(b, seed=0, boxes=[[("stain", 0.5, 0.5, 0.2, 0.9)]])
    with pytest.raises(ValueError, match="'dent' was not fitted"):
        gen.generate(b, seed=0, boxes=[[("dent", 0.1, 0.1, 0.2, 0.2)]])


def test_training_lowers_the_loss_on_toy_data():
    gen = BB.BBoxDiffusion(**{**FAST, "lr": 2e-3}).fit(make_toy_batch(2, 32), toy_anomalies(), steps=30)
    first, last = sum(gen.losses[:5]) / 5, sum(gen.losses[-5:]) / 5
    assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    with pytest.raises(ValueError, match="divisible by 32"):
        BB.BBoxDiffusion(model="paper").fit(None, toy_anomalies(48), steps=1)
