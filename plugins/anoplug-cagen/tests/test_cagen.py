"""CAGEN: the conformance kit on a tiny random SD stack, plus one test per paper step that fails without it."""

from __future__ import annotations

import contextlib

import pytest
import torch

from anoplug.testing import LearnedGeneratorConformance, make_toy_batch
from anoplug.types import Batch

pytest.importorskip("diffusers")

from anoplug_cagen import method as C  # noqa: E402

FAST = {"base_model": "tiny-random", "steps": 3, "fit_steps": 2, "batch_size": 2, "guidance": 2.0}


def toy_anomalies(n_per_type: int = 3, seed: int = 7) -> Batch:
    """Two defect types with distinct shapes: a dark tall bar ("scratch") and a bright square ("hole")."""
    b = make_toy_batch(2 * n_per_type, 64, seed=seed)
    b.mask[:n_per_type, :, 12:44, 20:28] = 1
    b.mask[n_per_type:, :, 30:50, 30:50] = 1
    dark = torch.where(b.mask.bool().expand_as(b.image), b.image * 0.3, b.image)
    b.image = torch.cat([dark[:n_per_type], torch.where(b.mask.bool().expand_as(b.image), 0.95, b.image)[n_per_type:]])
    b.label = ["scratch"] * n_per_type + ["hole"] * n_per_type
    return b


def centre_mask(size: int = 64, n: int = 1) -> torch.Tensor:
    m = torch.zeros(n, 1, size, size)
    m[..., 16:48, 16:48] = 1
    return m


@pytest.fixture(scope="module")
def trained() -> C.Cagen:
    """A few large steps, so the zero convolutions have left zero and the hint acts."""
    return C.Cagen(**{**FAST, "lr": 2e-2, "fit_steps": 8}).fit(None, toy_anomalies())


@contextlib.contextmanager
def changed(gen: C.Cagen, **update):
    """``gen`` with some generation-time parameters changed for the block."""
    was = gen.params
    gen.params = was.model_copy(update=update)
    try:
        yield gen
    finally:
        gen.params = was


def normals(n: int = 2) -> Batch:
    return make_toy_batch(n, 64, seed=3)


class TestCagenConformance(LearnedGeneratorConformance):
    generator_name = "cagen"
    generator_class = C.Cagen
    params = FAST
    bad_params = {"steps": 0, "guidance": 0.5, "fusion": "sideways", "shots_per_type": 0}
    entry_module = "anoplug_cagen.plugin"

    def fit_data(self):
        return None, toy_anomalies()


# -- 1. few shots ----------------------------------------------------------------------------------------------------
def test_select_shots_takes_the_first_k_of_each_type_and_never_good():
    labels = ["good", "hole", "scratch", "hole", "scratch", "hole", "hole", "scratch", "scratch"]
    assert C.select_shots(labels, 3) == [1, 3, 5, 2, 4, 7]


def test_only_three_pairs_per_type_enter_training():
    """Removing the 3-shot selection (training on every anomaly) changes the weights: this fails then."""
    five = toy_anomalies(5)
    other = five.clone()
    other.image[[3, 4, 8, 9]] = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    other.mask[[3, 4, 8, 9]] = 1.0
    a = C.Cagen(**FAST).fit(None, five)
    b = C.Cagen(**FAST).fit(None, other)
    assert a.shot_types == ["hole"] * 3 + ["scratch"] * 3 and len(a.shot_sources) == 6
    for (k, t), u in zip(a.controlnet.state_dict().items(), b.controlnet.state_dict().values()):
        assert torch.equal(t, u), f"{k}: the 4th and 5th anomalies of a type reached training"


# -- 2. the mask is the ControlNet's hint ---------------------------------------------------------------------------------
def test_zeroing_the_hint_changes_the_output_inside_the_mask(trained, monkeypatch):
    """Without the mask as hint (hint → zeros) the defect differs inside the mask; outside both keep the background."""
    b = normals().with_conditions(target_mask=centre_mask(n=2))
    with_hint = trained.generate(b, seed=0)
    monkeypatch.setattr(C.Cagen, "_hint", lambda self, m: torch.zeros_like(m))
    no_hint = trained.generate(b, seed=0)
    inside = centre_mask(n=2).bool().expand_as(b.image)
    d = (with_hint.image - no_hint.image).abs()
    assert float(d[inside].mean()) > 1e-3, "the hint does not reach the model"
    assert float(d[inside].mean()) > 3 * float(d[~inside].mean())


def test_training_hints_are_the_shot_masks():
    """The ControlNet learns from the masks themselves (binary, 1 channel): catches a hint of other content."""
    g = C.Cagen(**FAST)
    an = toy_anomalies()
    data = g.build(None, an, torch.Generator().manual_seed(0))
    assert data.condition.shape == (6, 1, 32, 32)
    assert torch.equal(data.condition.cpu(), g.shot_masks)
    small = torch.nn.functional.interpolate(an.mask[C.select_shots(an.label, 3)], size=(32, 32), mode="area")
    assert float(((small > 0.5).float() - data.condition.cpu()).abs().mean()) < 0.02
    assert set(data.condition.unique().tolist()) == {0.0, 1.0}


def test_controlnet_residuals_reach_the_unet(trained):
    """conditioning_scale 0 (the ControlNet switched off) gives another image: catches a UNet-only model call."""
    b = normals().with_conditions(target_mask=centre_mask(n=2))
    on = trained.generate(b, seed=0)
    with changed(trained, conditioning_scale=0.0):
        off = trained.generate(b, seed=0)
    assert float((on.image - off.image).abs().max()) > 1e-3


# -- 3. the defect type selects the prompt ------------------------------------------------------------------------------
def test_defect_type_selects_its_prompt_in_training_and_generation(trained):
    """Each shot is captioned with its own type, and defect_type picks that caption: fails if the type is dropped."""
    fresh = C.Cagen(**FAST)
    data = fresh.build(None, toy_anomalies(), torch.Generator().manual_seed(0))
    parts = fresh.parts
    for k, t in enumerate(fresh.shot_types):
        assert t in fresh._prompt(t)
        assert torch.equal(data.text[k], parts.encode_text([fresh._prompt(t)])[0])
    assert not torch.equal(data.text[0], data.text[-1])
    b = normals()
    m = centre_mask(n=2)
    hole = trained.generate(b.with_conditions(target_mask=m, defect_type=["hole"] * 2), seed=0)
    scratch = trained.generate(b.with_conditions(target_mask=m, defect_type=["scratch"] * 2), seed=0)
    assert hole.label == ["hole", "hole"] and scratch.label == ["scratch", "scratch"]
    inside = m.bool().expand_as(b.image)
    d = (hole.image - scratch.image).abs()
    assert float(d[inside].mean()) > 1e-3 and float(d[inside].mean()) > 3 * float(d[~inside].mean())


def test_unfitted_defect_type_is_a_clear_error(trained):
    from anoplug.conditions import ConditionError

    with pytest.raises(ConditionError, match="defect_type 'crack'"):
        trained.generate(normals().with_conditions(defect_type=["crack", "hole"]), seed=0)


# -- 4. latent fusion ---------------------------------------------------------------------------------------------------
def test_latent_fusion_keeps_the_background_close_to_the_input():
    """On the tiny base (a trained VAE): with fusion off (no blend, no final fusion) the background drifts far more.

    Catches removing the latent fusion. The reference is the VAE's reconstruction of the input,
    the closest a decoded latent can get.
    """
    from anoplug.data.toy import ToyDataset

    gen = C.Cagen(**{**FAST, "base_model": "tiny-base", "fit_steps": 1}).fit(None, toy_anomalies())
    b = ToyDataset("metal", split="train", size=64).batch([0, 1]).with_conditions(target_mask=centre_mask(n=2))
    fused = gen.generate(b, seed=0)
    with changed(gen, fusion="none", final_fusion=False):
        free = gen.generate(b, seed=0)
    parts = gen.parts
    recon = parts.decode(parts.encode_image(b.image))
    outside = (centre_mask(n=2) == 0).expand_as(b.image)
    err_fused = float((fused.image - recon).abs()[outside].mean())
    err_free = float((free.image - recon).abs()[outside].mean())
    assert err_fused < 0.5 * err_free, (err_fused, err_free)
    assert float((fused.image - b.image).abs()[outside].mean()) < 0.06


def test_final_fusion_takes_the_normal_latent_outside_the_mask():
    g = torch.Generator().manual_seed(0)
    gen, normal = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    m = torch.zeros(2, 1, 8, 8)
    m[..., 2:5, 3:6] = 1
    out = C.fuse_latents(gen, normal, m)
    assert torch.equal(out[:, :, 2:5, 3:6], gen[:, :, 2:5, 3:6])
    assert torch.equal(out * (1 - m), normal * (1 - m))


def test_latent_mask_any_keeps_thin_defects_that_area_drops():
    pix = torch.zeros(1, 1, 64, 64)
    pix[..., :, 30] = 1  # a 1-px line
    assert int(C.latent_mask(pix, (16, 16), "any").sum()) == 16
    assert int(C.latent_mask(pix, (16, 16), "area", 0.5).sum()) == 0


def test_paste_background_makes_the_outside_exact(trained):
    b = normals().with_conditions(target_mask=centre_mask(n=2))
    with changed(trained, paste_background=True):
        out = trained.generate(b, seed=0)
    outside = (centre_mask(n=2) == 0).expand_as(b.image)
    assert torch.equal(out.image[outside], b.image[outside])


def test_without_target_mask_a_fitted_shot_mask_of_the_type_is_used(trained):
    """The drawn mask is one of the type's shot masks (maybe flipped), resized to the image."""
    out = trained.generate(normals(), seed=5)
    for s, m in zip(out.samples, out.mask):
        src = trained.shot_masks[s["shot"]]
        src = src.flip(-1) if s["hflip"] else src
        src = src.flip(-2) if s["vflip"] else src
        assert trained.shot_types[s["shot"]] == s["defect_type"]
        small = torch.nn.functional.interpolate(m[None], size=src.shape[-2:], mode="area")[0]
        assert float(((small > 0.5).float() - src).abs().mean()) < 0.05
