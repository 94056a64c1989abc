"""BBox-guided diffusion: conformance on a tiny UNet, plus the paper's encodings."""

from __future__ import annotations

import math

import pytest
import torch

from anoplug.conditions import ConditionError
from anoplug.generator import Samples
from anoplug.testing import LearnedGeneratorConformance, make_toy_batch
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


class TestBBoxDiffusionConformance(LearnedGeneratorConformance):
    generator_name = "bboxdiffusion"
    generator_class = BB.BBoxDiffusion
    params = FAST
    bad_params = {"sample_steps": 0, "model": "huge", "lr": -1.0}
    entry_module = "anoplug_bboxdiffusion.plugin"
    image_size = 32
    fit_steps = 4
    box_label = "scratch"

    def fit_data(self):
        return make_toy_batch(2, 32), toy_anomalies()


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
    a = gen.generate(b.with_conditions(boxes=[[("scratch", 0.1, 0.1, 0.4, 0.4)]]), seed=0)
    c = gen.generate(b.with_conditions(boxes=[[(2, 0.5, 0.5, 0.9, 0.9)]]), seed=0)  # a class id: 2 = "stain"
    assert (a.image - c.image).abs().max() > 1e-4, "the box condition does not reach the network"
    assert a.samples[0] == {"boxes": [("scratch", 0.1, 0.1, 0.4, 0.4)]}
    assert c.samples[0] == {"boxes": [("stain", 0.5, 0.5, 0.9, 0.9)]}
    assert a.extras["class_map"].shape == (1, 1, 32, 32)
    with pytest.raises(ConditionError, match=r"conditions\.boxes\[0\]"):
        b.with_conditions(boxes=[[("stain", 0.5, 0.5, 0.2, 0.9)]])
    with pytest.raises(ConditionError, match=r"conditions\.boxes\[0\]: label 'dent' was not fitted"):
        gen.generate(b.with_conditions(boxes=[[("dent", 0.1, 0.1, 0.2, 0.2)]]), seed=0)
    with pytest.raises(ConditionError, match=r"conditions\.boxes\[0\]: label 3 is neither"):
        gen.generate(b.with_conditions(boxes=[[(3, 0.1, 0.1, 0.2, 0.2)]]), seed=0)
    with pytest.raises(ConditionError, match=r"conditions\.target_mask"):
        gen.generate(b.with_conditions(target_mask=torch.ones(1, 1, 32, 32)), seed=0)


class _Oracle(torch.nn.Module):
    """A perfect denoiser for x0 = (grey image, the condition's box class bits): the boxes' own mask must come out."""

    def __init__(self, bits: int, train_steps: int) -> None:
        super().__init__()
        self.bits, self.abar = bits, BB.make_ddpm(train_steps).alphas_cumprod

    def forward(self, x, t):
        from types import SimpleNamespace

        x_t, cond = x[:, : 3 + self.bits], x[:, 3 + self.bits:]
        x0 = torch.cat([torch.zeros_like(x_t[:, :3]), cond[:, 1:]], 1)
        a = self.abar[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x_t - a.sqrt() * x0) / (1 - a).sqrt())


def test_boxes_condition_is_the_output_mask_with_a_model_that_learned_it():
    gen = BB.BBoxDiffusion(**FAST).fit(None, toy_anomalies(), steps=1)
    gen.unet = _Oracle(gen.bits, gen.params.train_steps)
    boxes = [[("scratch", 0.1, 0.1, 0.4, 0.5)], [("stain", 0.5, 0.5, 0.9, 0.9), ("scratch", 0.0, 0.75, 0.25, 1.0)]]
    out = gen.generate(make_toy_batch(2, 32).with_conditions(boxes=boxes), seed=0)
    for i, bx in enumerate(boxes):
        ids = [(gen.classes.index(b[0]), *b[1:]) for b in bx]
        assert torch.equal(out.extras["class_map"][i], BB.class_map(ids, 32, 32)), f"sample {i}: class map"
        assert torch.equal(out.mask[i], (BB.class_map(ids, 32, 32) > 0).float())
    assert out.label == ["scratch", "stain"]


def test_replay_reproduces_bytes_and_follows_edited_boxes():
    gen = BB.BBoxDiffusion(**FAST).fit(None, toy_anomalies(), steps=2)
    b = make_toy_batch(2, 32)
    out = gen.generate(b, seed=0)  # boxes drawn
    seeds = [m["seed"] for m in out.meta]
    store: dict = {}
    records = Samples.unpack(out.samples.pack(store), store)
    assert records == out.samples and isinstance(records[0]["boxes"][0], tuple)
    again = gen.generate(b, seeds=seeds, samples=records)
    assert again.image.numpy().tobytes() == out.image.numpy().tobytes()
    assert again.mask.numpy().tobytes() == out.mask.numpy().tobytes()
    edited = Samples(dict(r) for r in records)
    edited[0] = {"boxes": [("stain", 0.6, 0.6, 0.95, 0.95)]}
    new = gen.generate(b, seeds=seeds, samples=edited)
    assert new.samples[0] == edited[0] and new.samples[1] == out.samples[1]
    assert (new.image[0] - out.image[0]).abs().max() > 1e-4
    assert (new.image[1] - out.image[1]).abs().max() <= 1e-5  # the other sample keeps its bytes (to batch rounding)
    # the same boxes as a condition: the same output as the edited replay
    cond = gen.generate(b.with_conditions(boxes=[r["boxes"] for r in edited]), seeds=seeds)
    assert cond.image.numpy().tobytes() == new.image.numpy().tobytes()
    with pytest.raises(ConditionError, match=r"conditions\.boxes\[0\].*differs from the replayed samples\[0\]"):
        gen.generate(b.with_conditions(boxes=[r["boxes"] for r in edited]), seeds=seeds, samples=records)
    with pytest.raises(ValueError, match=r"samples\[0\]: label 'dent'"):
        gen.generate(b, seeds=seeds, samples=[{"boxes": [("dent", 0.1, 0.1, 0.2, 0.2)]}, records[1]])
    with pytest.raises(ValueError, match=r"samples\[1\] must be a record"):
        gen.generate(b, seeds=seeds, samples=[records[0], {"anomaly_type": "stain"}])


def test_resume_is_bit_identical_and_default_steps_are_epochs(tmp_path):
    data = (make_toy_batch(2, 32), toy_anomalies())
    whole = BB.BBoxDiffusion(**FAST).fit(*data, steps=5, checkpoint_every=2, checkpoint_dir=tmp_path)
    for mid in ("step-000002", "step-000004"):
        resumed = BB.BBoxDiffusion(**FAST).fit(*data, steps=5, resume_from=tmp_path / mid)
        theirs = resumed.unet.state_dict()
        for n, t in whole.unet.state_dict().items():
            assert t.numpy().tobytes() == theirs[n].numpy().tobytes(), f"unet.{n} differs after resuming at {mid}"
        assert resumed.losses == whole.losses
    assert len(BB.BBoxDiffusion(**FAST, epochs=2).fit(*data).history) == 2 * 2  # 6 images at batch 4: 2 steps/epoch
    seeded = BB.BBoxDiffusion(**FAST, seed=1234).fit(*data, steps=2)
    other = BB.BBoxDiffusion(**FAST).fit(*data, steps=2, seed=1)
    first = BB.BBoxDiffusion(**FAST).fit(*data, steps=2)
    assert first.losses == seeded.losses != other.losses


def test_training_lowers_the_loss_on_toy_data():
    gen = BB.BBoxDiffusion(**{**FAST, "lr": 2e-3}).fit(make_toy_batch(2, 32), toy_anomalies(), steps=30)
    first, last = sum(gen.losses[:5]) / 5, sum(gen.losses[-5:]) / 5
    assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    with pytest.raises(ValueError, match="divisible by 32"):
        BB.BBoxDiffusion(model="paper").fit(None, toy_anomalies(48), steps=1)


def test_paper_unet_has_the_official_network_config():
    """Review fix: ``configs/paper/ours.yaml`` sets these four away from diffusers' defaults; with the
    defaults an official checkpoint would load (same shapes) and compute something else."""
    cfg = BB.build_unet("paper", 10, 6, 256).config
    official = {"attention_head_dim": None, "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6,
                "block_out_channels": (128, 128, 256, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32,
                "downsample_padding": 0, "add_attention": True, "mid_block_scale_factor": 1,
                "time_embedding_type": "positional", "act_fn": "silu", "resnet_time_scale_shift": "default"}
    assert {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in official} == official


def test_without_boxes_samples_are_real_fitted_layouts():
    """Review fix: the official sampler takes dataset layouts, not uniform random boxes."""
    gen = BB.BBoxDiffusion(**FAST).fit(None, toy_anomalies(), steps=1)
    fitted = [[tuple(b) for b in row] for row in gen.layouts]
    assert fitted and all(row for row in fitted)
    drawn = gen.sample(make_toy_batch(8, 32), [torch.Generator().manual_seed(i) for i in range(8)])
    assert all([tuple(b) for b in rec["boxes"]] in fitted for rec in drawn)
    rand = BB.BBoxDiffusion(**FAST, layout="random").fit(None, toy_anomalies(), steps=1)
    drawn = rand.sample(make_toy_batch(8, 32), [torch.Generator().manual_seed(i) for i in range(8)])
    assert not all([tuple(b) for b in rec["boxes"]] in fitted for rec in drawn)
