"""AnomalyDiffusion: conformance on a tiny random LDM-style stack, plus one test per mechanism."""

from __future__ import annotations

import pytest
import torch

from anoplug.conditions import ConditionError
from anoplug.generator import Samples
from anoplug.testing import LearnedGeneratorConformance, make_toy_batch
from anoplug.types import Batch

pytest.importorskip("diffusers")

from anoplug_anomalydiffusion import anomalydiffusion as AD  # noqa: E402

FAST = {"base_model": "tiny-random", "steps": 4, "mask_steps": 3, "batch_size": 2, "fit_steps": 3, "mask_fit_steps": 2}


def toy_anomalies(n_per_type: int = 3) -> Batch:
    b = make_toy_batch(2 * n_per_type, 64, seed=7)
    b.mask[: n_per_type, :, 16:40, 20:30] = 1  # "scratch": a tall bar
    b.mask[n_per_type:, :, 30:50, 30:50] = 1  # "stain": a square
    b.image = torch.where(b.mask.bool().expand_as(b.image), b.image * 0.3, b.image)
    b.label = ["scratch"] * n_per_type + ["stain"] * n_per_type
    return b


def fitted(**params) -> AD.AnomalyDiffusion:
    return AD.AnomalyDiffusion(**{**FAST, **params}).fit(None, toy_anomalies())


def centre_mask(size: int = 64) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., 20:44, 16:40] = 1
    return m


def with_mask(b: Batch, mask: torch.Tensor | None = None) -> Batch:
    return b.with_conditions(target_mask=centre_mask(b.size[0]) if mask is None else mask)


class TestAnomalyDiffusionConformance(LearnedGeneratorConformance):
    generator_name = "anomalydiffusion"
    generator_class = AD.AnomalyDiffusion
    # no mask model here: the kit's resume check expects fit(steps=N) to plan N steps (the mask
    # phases add theirs; test_resume_across_the_phases_is_bit_identical covers them)
    params = {**FAST, "mask_fit_steps": 0}
    bad_params = {"steps": 0, "eta": 1.5, "blend": "sideways", "arr_max_weight": 0.5}
    entry_module = "anoplug_anomalydiffusion.plugin"
    conditions = {"target_mask": centre_mask()}

    def fit_data(self):
        return None, toy_anomalies()


def test_arr_weights_in_range_inside_and_one_outside():
    g = torch.Generator().manual_seed(0)
    m = torch.zeros(2, 1, 16, 16)
    m[..., 4:12, 4:12] = 1
    z0 = torch.randn(2, 4, 16, 16, generator=g)
    x = z0 + torch.randn(2, 4, 16, 16, generator=g) * torch.linspace(0.1, 2, 16)  # moved more to the right
    w = AD.arr_weights(x, z0, m, 1.5)
    assert torch.equal(w[m == 0], torch.ones_like(w[m == 0]))
    inside = w[m == 1]
    assert float(inside.min()) >= 1.0 and float(inside.max()) <= 1.5 and float(inside.max()) > 1.0
    # less movement → larger weight: the left of the mask outweighs its right
    assert float(w[..., 4:12, 4:6].mean()) > float(w[..., 4:12, 10:12].mean())
    assert torch.equal(AD.arr_weights(x, z0, torch.zeros_like(m), 1.5), torch.ones_like(m))


def test_arr_radius_matches_original_constants():
    assert AD.arr_radius(900, 1000, 0.25, 32) == 8  # (900+100)·8/1000
    assert AD.arr_radius(0, 1000, 0.25, 32) == 0
    assert AD.arr_radius(996, 1000, 0.25, 16) == 4  # scaled to a 16-px latent
    m = torch.zeros(1, 1, 9, 9)
    m[..., 4, 4] = 1
    assert int(AD.dilate(m, 2).sum()) == 25


def test_arr_reweights_every_cross_attention_layer(monkeypatch):
    from anoplug.diffusion import attention as A

    calls: list[tuple[str, bool]] = []
    orig = A.AnoplugAttnProcessor.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
            anoplug_weight=None, anoplug_tokens=None):
        calls.append((self.name, self.reweight and self.state.weight is not None))
        return orig(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, anoplug_weight, anoplug_tokens)

    monkeypatch.setattr(A.AnoplugAttnProcessor, "__call__", spy)
    gen = fitted(adaptive_reweighting=True, mask_fit_steps=0)
    b = make_toy_batch(2, 64)
    with_arr = gen.generate(with_mask(b), seed=0)
    layers = A.cross_attention_layers(gen.parts.unet)
    assert {n for n, active in calls if active} == set(layers)
    gen.params.adaptive_reweighting = False
    calls.clear()
    without = gen.generate(with_mask(b), seed=0)
    assert not any(active for _, active in calls)
    assert (with_arr.image - without.image).abs().max() > 1e-4, "ARR had no effect"


def test_guidance_adds_one_unconditional_pass_without_reweighting(monkeypatch):
    """guidance > 1: a second UNet pass on the empty prompt per step, never re-weighted; the default makes none."""
    from anoplug.diffusion import attention as A

    seen: list[tuple[int, bool]] = []  # (key length of the cross-attention, re-weighting active)
    orig = A.AnoplugAttnProcessor.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
            anoplug_weight=None, anoplug_tokens=None):
        if encoder_hidden_states is not None:
            seen.append((id(encoder_hidden_states), self.reweight and self.state.weight is not None))
        return orig(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, anoplug_weight, anoplug_tokens)

    monkeypatch.setattr(A.AnoplugAttnProcessor, "__call__", spy)
    gen = fitted(adaptive_reweighting=True, mask_fit_steps=0)
    b = make_toy_batch(2, 64)
    plain = gen.generate(with_mask(b), seed=0)
    contexts_plain = {c for c, _ in seen}
    seen.clear()
    gen.params.guidance = 4.0
    guided = gen.generate(with_mask(b), seed=0)
    contexts = {c for c, _ in seen}
    assert len(contexts) == len(contexts_plain) + 1  # the unconditional context joins
    by_context = {c: {active for cc, active in seen if cc == c} for c in contexts}
    assert sorted(tuple(v) for v in by_context.values()) == [(False,), (True,)]  # one re-weighted, one never
    m = guided.mask.bool().expand_as(b.image)
    assert torch.equal(guided.image[~m], b.image[~m])
    assert (guided.image - plain.image).abs()[m].max() > 1e-4


def test_the_blend_parameter_chooses_the_sampling_hooks(monkeypatch):
    """Each ``blend`` value is one §2.1 variant of the shared loop; ``guidance`` and ``paste_background`` add theirs."""
    from anoplug.diffusion import sampling as S

    runs: list[list[S.Hook]] = []
    original = S.sample

    def spy(*args, hooks=(), **kw):
        runs.append(list(hooks))
        return original(*args, hooks=hooks, **kw)

    monkeypatch.setattr(S, "sample", spy)
    gen = fitted()
    b = with_mask(make_toy_batch(1, 64))
    images = {}
    for blend, first in (("before", S.BlendBefore), ("after", S.BlendAfter), ("pixel_x0", S.PixelX0Blend),
                         ("composite", None), ("none", None)):
        gen.params.blend = blend
        images[blend] = gen.generate(b, seed=0).image
        kinds = [type(h) for h in runs[-1]]
        end = [S.FinalComposite, S.ExactPaste] if blend == "composite" else [S.ExactPaste]
        assert kinds == [first] * (first is not None) + [S.ReweightCrossAttention] + end, blend
    assert len({im.numpy().tobytes() for im in images.values()}) == len(images)  # five different samplers
    gen.params.blend, gen.params.guidance, gen.params.paste_background = "before", 3.0, False
    gen.generate(make_toy_batch(1, 64), seed=0)  # no target mask: the mask model runs first
    mask_run, image_run = runs[-2], runs[-1]
    assert [type(h) for h in mask_run] == [S.ClassifierFreeGuidance] and mask_run[0].scale == gen.params.mask_guidance
    assert [type(h) for h in image_run] == [S.BlendBefore, S.ClassifierFreeGuidance, S.ReweightCrossAttention]
    assert image_run[1].scale == 3.0 and not image_run[1].batched  # two passes: the unconditional one is never re-weighted


def test_spatial_tokens_follow_the_mask_and_training_subset():
    gen = fitted()
    a, b = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    a[..., :20, :20] = 1
    b[..., 40:, 40:] = 1
    with torch.no_grad():
        assert (gen.encoder(a) - gen.encoder(b)).abs().max() > 1e-4
    assert gen.appearance.shape[:2] == (2, 4) and gen.mask_vectors.shape[:2] == (2, 16)
    anomalies = toy_anomalies(n_per_type=6)
    assert gen._select(anomalies) == [0, 1, 2, 6, 7, 8]  # first N//3+1 of each type


def test_background_kept_and_inside_changed():
    gen = fitted()
    b = make_toy_batch(2, 64)
    out = gen.generate(with_mask(b), seed=3)
    m = out.mask.bool().expand_as(out.image)
    assert torch.equal(out.image[~m], b.image[~m])
    assert float((out.image - b.image).abs()[m].mean()) > 0.01
    assert out.label == [out.meta[i]["sample"]["anomaly_type"] for i in range(2)]


def test_generated_masks_pass_the_border_check():
    gen = fitted()
    out = gen.generate(make_toy_batch(3, 64), seed=5)
    for i in range(3):
        if out.label[i] != "good":
            assert bool(AD.border_ok(out.mask[i : i + 1])[0])
        assert out.meta[i]["sample"]["mask_attempts"] >= 1
    edge = torch.zeros(1, 1, 30, 30)
    edge[..., 0, :] = 1
    assert not bool(AD.border_ok(edge)[0]) and not bool(AD.border_ok(torch.zeros(1, 1, 30, 30))[0])


def test_bad_inputs_are_named():
    gen = fitted()
    with pytest.raises(ConditionError, match=r"conditions.target_mask must be \[2, 1, 64, 64\]"):
        make_toy_batch(2, 64).with_conditions(target_mask=torch.ones(3, 1, 64, 64))
    with pytest.raises(ValueError, match="anomalies"):
        AD.AnomalyDiffusion(**FAST).fit(make_toy_batch(2, 64), None)
    gen.params.anomaly_type = "dent"
    with pytest.raises(ValueError, match="'dent' was not fitted"):
        gen.generate(with_mask(make_toy_batch(1, 64)), seed=0)


def test_missing_and_unused_conditions_name_the_field():
    gen = fitted()
    with pytest.raises(ConditionError, match=r"conditions\.boxes"):
        gen.generate(make_toy_batch(2, 64).with_conditions(boxes=[[("stain", 0.1, 0.1, 0.5, 0.5)]] * 2), seed=0)
    no_mask_model = fitted(mask_fit_steps=0)
    with pytest.raises(ConditionError, match=r"conditions\.target_mask.*mask_fit_steps=0"):
        no_mask_model.generate(make_toy_batch(2, 64), seed=0)


def test_target_mask_is_the_output_mask_and_the_label_is_the_type():
    gen = fitted(mask_fit_steps=0)
    target = torch.zeros(3, 1, 64, 64)
    target[0, :, 5:20, 5:30] = 1
    target[1, :, 30:60, 40:50] = 1  # sample 2: an empty target -> a normal image, labelled good
    b = make_toy_batch(3, 64)
    out = gen.generate(b.with_conditions(target_mask=target), seed=1)
    assert torch.equal(out.mask, target) and out.mask.data_ptr() != target.data_ptr()
    assert out.label[:2] == [out.samples[i]["anomaly_type"] for i in range(2)] and out.label[2] == "good"
    assert torch.equal(out.image[2], b.image[2])
    assert "mask_attempts" not in out.samples[0]  # nothing was drawn for the mask
    assert torch.equal(out.conditions.target_mask, target)


def test_replay_reproduces_bytes_and_follows_edited_records():
    gen = fitted()
    b = make_toy_batch(2, 64)
    out = gen.generate(b, seed=5)  # masks from the mask model
    seeds = [m["seed"] for m in out.meta]
    records = Samples.unpack(out.samples.pack())  # through the lossless serialisation
    again = gen.generate(b, seeds=seeds, samples=records)
    assert again.image.numpy().tobytes() == out.image.numpy().tobytes()
    assert again.mask.numpy().tobytes() == out.mask.numpy().tobytes()
    assert again.samples == out.samples
    # on a fixed target mask, another type / template in a record changes that sample only
    fixed = with_mask(b)
    base = gen.generate(fixed, seed=5)
    edited = Samples(dict(r) for r in base.samples)
    other = next(t for t in gen.types if t != edited[0]["anomaly_type"])
    edited[0]["anomaly_type"] = other
    edited[1]["template"] = (edited[1]["template"] + 1) % len(AD.TEMPLATES)
    new = gen.generate(fixed, seeds=[m["seed"] for m in base.meta], samples=edited)
    assert new.label[0] == other and new.samples[0]["anomaly_type"] == other
    assert new.samples[1]["template"] == edited[1]["template"]
    assert (new.image[0] - base.image[0]).abs().max() > 1e-4 and (new.image[1] - base.image[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"samples\[0\]\['anomaly_type'\] 'dent'"):
        gen.generate(fixed, seeds=[1, 2], samples=[{"anomaly_type": "dent", "template": 0}, edited[1]])


def test_resume_across_the_phases_is_bit_identical(tmp_path):
    """3 image steps, then 2 mask steps per type (2 types): resume inside the image phase and inside the mask phases."""
    from anoplug.learned import TRAINING_STATE

    whole = AD.AnomalyDiffusion(**FAST).fit(None, toy_anomalies(), checkpoint_every=2, checkpoint_dir=tmp_path)
    assert len(whole.history) == 3 + 2 * 2 and [h["phase"] for h in whole.history] == ["image"] * 3 + ["mask"] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000004", "step-000006"]
    for mid in ("step-000002", "step-000004"):
        assert (tmp_path / mid / f"{TRAINING_STATE}.json").is_file()
        resumed = AD.AnomalyDiffusion(**FAST).fit(None, toy_anomalies(), resume_from=tmp_path / mid)
        for key, t in whole.extra_state().items():
            assert t.numpy().tobytes() == resumed.extra_state()[key].numpy().tobytes(), f"{key} differs after {mid}"
        for n, t in whole.encoder.state_dict().items():
            assert t.numpy().tobytes() == resumed.encoder.state_dict()[n].numpy().tobytes(), f"encoder.{n} after {mid}"
        assert resumed.history == whole.history and resumed.losses == whole.losses


def test_fit_defaults_seed_0_and_the_seed_param():
    a = fitted()
    b = fitted(seed=0)
    c = AD.AnomalyDiffusion(**FAST).fit(None, toy_anomalies(), seed=1)
    assert torch.equal(a.appearance, b.appearance) and not torch.equal(a.appearance, c.appearance)
    assert len(a.losses["image"]) == 3 and len(a.losses["mask"]) == 2 * 2


def test_ldm_bert_family_path():
    """The paper's base is LDM-BERT (CompVis/ldm-text2im-large-256): the same code runs on its tiny twin."""
    gen = fitted(base_model="tiny-random-ldm", adaptive_reweighting=True)
    assert gen.parts.family == "ldm"
    assert gen.parts.tokenizer.tokenize(gen._star()) == [f"<ad_{i}>" for i in range(4)] + [f"<sp_{i}>" for i in range(4)]
    b = make_toy_batch(2, 64)
    out = gen.generate(with_mask(b), seed=0)
    m = out.mask.bool().expand_as(out.image)
    assert torch.equal(out.image[~m], b.image[~m]) and float((out.image - b.image).abs()[m].max()) > 0


def test_generated_mask_threshold_is_the_originals_on_the_raw_decoder_range():
    """Review fix: the original keeps decoded mask pixels > 0.8 on [-1, 1], i.e. > 0.9 on [0, 1]."""
    img = torch.tensor([0.85, 0.95]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    m = AD.binarise_generated_mask(img, AD.AnomalyDiffusionParams().mask_threshold)
    assert m.flatten().tolist() == [0.0, 1.0]


def test_latent_mask_is_plain_bilinear_then_at_least_half_as_the_original():
    """Review fix: torchvision 0.13's tensor Resize (bilinear, no antialias), then >= 0.5.

    A 2-px line at 256 px on a sampling column survives to the 32-px latent (area averaging gave
    0.25 and dropped it); the whole map equals torchvision's resize without antialias.
    """
    from torchvision.transforms.functional import resize

    m = torch.zeros(1, 1, 256, 256)
    m[..., 99:101] = 1  # columns 99-100: latent column 12 samples at 99.5
    lat = AD.latent_mask(m, (32, 32), 0.5)
    assert lat[..., 12].all() and lat.sum() == 32
    assert AD.latent_mask(m, (32, 32), 0.5, mode="area").sum() == 0
    rnd = (torch.rand(2, 1, 256, 256, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    ref = resize(rnd, [32, 32], antialias=False)
    assert torch.equal(AD.latent_mask(rnd, (32, 32), 0.5), (ref >= 0.5).float())
