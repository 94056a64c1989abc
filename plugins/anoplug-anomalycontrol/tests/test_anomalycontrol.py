"""AnomalyControl: the learned conformance kit plus one mechanism test per paper step (each says what removal it catches)."""

from __future__ import annotations

import pytest
import torch
from anoplug_anomalycontrol.asea import in_mask_fraction, run_asea
from anoplug_anomalycontrol.csm import CSM, tiny_blip2
from anoplug_anomalycontrol.method import AnomalyControl

from anoplug.data.toy import render
from anoplug.testing import LearnedGeneratorConformance, make_toy_batch
from anoplug.types import Batch

FAST = {"fit_steps": 2, "steps": 4, "batch_size": 2, "grad_accumulation": 1, "proj_dim": 16, "asea_steps": 2,
        "bank_size": 4}


def toy_anomalies(cats=("metal", "capsule"), n=4) -> Batch:
    parts = [render(c, "test", i, 0, 64) for c in cats for i in range(n)]
    parts = [b for b in parts if b.label[0] != "good"]
    return Batch(image=torch.cat([b.image for b in parts]), mask=torch.cat([b.mask for b in parts]),
                 label=[b.label[0] for b in parts], meta=[b.meta[0] for b in parts],
                 text=[(b.text or [""])[0] for b in parts])


class TestAnomalyControl(LearnedGeneratorConformance):
    generator_class = AnomalyControl
    params = FAST
    bad_params = {"lr": 0.0, "strength": 2.0}
    entry_module = "anoplug_anomalycontrol.plugin"
    replay_needs_seeds = True

    def fit_data(self):
        return make_toy_batch(self.batch_size, self.image_size, seed=10), toy_anomalies()



@pytest.fixture(scope="module")
def fitted() -> AnomalyControl:
    return AnomalyControl(**FAST).fit(None, toy_anomalies())


@pytest.fixture(scope="module")
def csm(fitted: AnomalyControl) -> CSM:
    return fitted.csm


def test_asea_raises_the_in_mask_attention_fraction(csm: CSM):
    """Catches skipping ASEA (steps=0) or a prompt that is never optimised: the Q-Former attention stays where it was."""
    a = toy_anomalies(("metal", "capsule"), 4)
    caps = list(a.text)
    g = csm.grid_mask(a.mask)
    on = run_asea(csm, a.image, a.mask, caps, steps=5)
    off = run_asea(csm, a.image, a.mask, caps, steps=0)
    before = in_mask_fraction(off.output.attention, g)
    after = in_mask_fraction(on.output.attention, g)
    has = g.sum(-1) > 0
    assert torch.equal(off.output.attention, on.before)  # the start is the plain (prompt-free) Q-Former
    assert bool((after[has] > before[has] + 0.05).all()), (before, after)
    assert [h["in_mask_fraction"] for h in on.history] == sorted(h["in_mask_fraction"] for h in on.history)


def test_asea_uses_the_last_forward_pass(csm: CSM):
    """Catches returning features of the final (5th) update instead of the official last forward (4 updates)."""
    a = toy_anomalies(("metal",), 4)
    r = run_asea(csm, a.image, a.mask, list(a.text), steps=3)
    g = csm.grid_mask(a.mask)
    assert abs(float(in_mask_fraction(r.output.attention, g).mean()) - r.history[-1]["in_mask_fraction"]) < 1e-6


def test_qformer_reads_the_caption(csm: CSM):
    """Catches dropping the caption from the Q-Former (image-only mode): the features must depend on the text."""
    a = toy_anomalies(("metal",), 4)
    x = csm(a.image, ["a long bright scratch"] * len(a)).features
    y = csm(a.image, ["a dark round hole"] * len(a)).features
    assert not torch.allclose(x, y)


def test_sga_tokens_change_the_output(fitted: AnomalyControl):
    """Catches SGA scale 0 or the SG tokens removed: the reference must reach the image through the SG tokens only."""
    b = make_toy_batch(2, 64)
    refs = toy_anomalies(("metal", "capsule"), 4)
    m = refs.mask[:2]

    def run(ref_ids: list[int], scale: float) -> torch.Tensor:
        fitted.with_generation_params(sga_scale=scale)
        kw = {"references": refs.image[ref_ids, None], "reference_masks": refs.mask[ref_ids, None], "target_mask": m}
        return fitted.generate(b.with_conditions(**kw), seed=0).image

    try:
        a_on, b_on = run([0, 1], 1.0), run([4, 5], 1.0)
        a_off, b_off = run([0, 1], 0.0), run([4, 5], 0.0)
    finally:
        fitted.with_generation_params(sga_scale=1.0)
    assert float((a_on - b_on).abs().max()) > 1e-3  # another reference, another defect
    assert float((a_on - a_off).abs().max()) > 1e-3  # the SG tokens change the output
    assert torch.equal(a_off, b_off)  # without them the reference has no way in (same caption, same prompt)


def test_sga_train_scale_is_half():
    """Catches training at the inference scale: the official SGAdapter.forward uses scale 0.5."""
    g = AnomalyControl(**FAST)
    data = g.build(None, toy_anomalies(("metal",), 4), torch.Generator().manual_seed(0))
    g.sga.set_scale(1.0)
    g.training_step(data, 0, torch.Generator().manual_seed(0))
    assert all(layer.scale == 0.5 for layer in g.sga.adapter.layers)


def test_composite_keeps_pixels_outside_the_blurred_mask(fitted: AnomalyControl):
    """Catches a missing final composite (VAE error everywhere) or an unblurred paste (hard seam at the mask edge)."""
    from anoplug.ops import gaussian_blur

    b = make_toy_batch(2, 64)
    m = torch.zeros(2, 1, 64, 64)
    m[..., 24:40, 24:40] = 1
    refs = toy_anomalies(("metal",), 4)
    out = fitted.generate(b.with_conditions(target_mask=m, references=refs.image[:2, None],
                                            reference_masks=refs.mask[:2, None]), seed=0)
    alpha = gaussian_blur(m, 5.0 * 64 / 512)
    far = (alpha == 0).expand_as(b.image)
    assert torch.equal(out.image[far], b.image[far])
    ring = ((alpha > 0) & (alpha < 1) & (m == 0)).expand_as(b.image)
    assert bool(ring.any()) and float((out.image[ring] - b.image[ring]).abs().max()) > 0  # the blur reaches past it
    assert torch.equal(out.mask, m)  # the output mask is the target mask


def test_inpainting_unet_sees_the_mask_and_masked_image(fitted: AnomalyControl):
    """Catches feeding the 9-channel UNet zeros or the full image: its extra inputs are mask and image·(mask < 0.5)."""
    img = make_toy_batch(1, 64).image
    m = torch.zeros(1, 1, 64, 64)
    m[..., 16:48, 16:48] = 1
    z0, lat, masked = fitted._inpaint_inputs(img, m)
    assert lat.shape[-2:] == z0.shape[-2:] and float(lat.sum()) > 0
    assert torch.allclose(masked, fitted.parts.encode_image(img * (1 - m)))
    assert not torch.allclose(masked, z0)


def test_strength_truncates_the_schedule():
    """Catches running all steps from pure noise: strength 0.7 keeps the last int(0.7·n) steps (pipeline get_timesteps)."""
    from anoplug.diffusion.img2img import Truncated
    from anoplug.diffusion.loading import make_scheduler

    s = Truncated(make_scheduler("ddim"), 0.7)
    s.set_timesteps(10)
    assert len(s.timesteps) == 7


def test_reference_caption_drives_the_semantics(fitted: AnomalyControl):
    """Catches ignoring the reference caption (or its prompt fallback): another caption, other Q-Former features."""
    refs = toy_anomalies(("metal",), 4)
    kw = {"references": refs.image[:2, None], "reference_masks": refs.mask[:2, None]}
    b = make_toy_batch(2, 64)

    def pooled(**c) -> torch.Tensor:
        fitted.generate(b.with_conditions(**kw, **c), seed=0)
        return fitted.last_asea.output.pooled.clone()

    assert not torch.allclose(pooled(reference_captions=[["a scratch"]] * 2), pooled(reference_captions=[["a hole"]] * 2))
    assert not torch.allclose(pooled(prompt=["a scratch"] * 2), pooled(prompt=["a hole"] * 2))  # the fallback
    # the reference caption wins over the prompt for the Q-Former (the prompt then only steers the UNet text)
    assert torch.equal(pooled(reference_captions=[["a scratch"]] * 2, prompt=["a hole"] * 2),
                       pooled(reference_captions=[["a scratch"]] * 2))


def test_tiny_blip2_is_seeded_and_frozen():
    """Catches a Q-Former built from the global RNG (different weights per process) or left trainable."""
    a, b = tiny_blip2(100, seed=3), tiny_blip2(100, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not any(p.requires_grad for p in a.parameters())


def test_real_qformer_path_reads_a_local_blip2_directory(tmp_path, csm: CSM):
    """Catches a real path that downloads or ignores the directory: a saved BLIP-2 loads back with the same features."""
    from anoplug_anomalycontrol.csm import load_blip2

    csm.model.save_pretrained(tmp_path, safe_serialization=True)
    csm.tokenizer.save_pretrained(tmp_path)
    model, tok = load_blip2(tmp_path)
    a = toy_anomalies(("metal",), 4)
    again = CSM(model, tok)(a.image, list(a.text)).features
    assert torch.allclose(again, csm(a.image, list(a.text)).features, atol=1e-5)
    assert model.config._attn_implementation == "eager"
