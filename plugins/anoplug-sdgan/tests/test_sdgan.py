"""SDGAN: the learned-method conformance kit on a tiny model, plus one test per step of the method.

Each mechanism test names the step (numbers of ``sdgan.py``'s docstring) and how it was checked
to fail without it (the step was disabled locally once and the test failed).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from anoplug_sdgan import networks as N
from anoplug_sdgan import sdgan as S

from anoplug.testing import LearnedGeneratorConformance, make_toy_anomalies, make_toy_batch
from anoplug.train import GANBatch
from anoplug.types import Batch

TINY = {"resolution": 32, "width": 8, "blocks": 1, "d_width": 8, "d_layers": 1, "batch_size": 2, "fit_steps": 2}


def fitted(steps: int = 2, anomalies: Batch | None = None, **params) -> S.SDGAN:
    a = make_toy_anomalies(4, 64) if anomalies is None else anomalies
    return S.SDGAN(**{**TINY, **params}).fit(make_toy_batch(4, 64, seed=10), a, steps=steps)


class TestSDGANConformance(LearnedGeneratorConformance):
    generator_name = "sdgan"
    generator_class = S.SDGAN
    params = TINY
    bad_params = {"resolution": 30, "alpha": 0.0, "preset": "gpu", "mask_threshold": 1.5, "orientation": "any"}
    entry_module = "anoplug_sdgan.plugin"


# -- 3. the D2 adversarial loss --------------------------------------------------------------------------
class _Recorder(nn.Module):
    """Wraps a critic and keeps each output (with its gradient; and its input if asked) in call order."""

    def __init__(self, inner: nn.Module, log: list, inputs: bool = False) -> None:
        super().__init__()
        self.inner, self.log, self.inputs = inner, log, inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if out.requires_grad:
            out.retain_grad()
        self.log.append((out, x) if self.inputs else out)
        return out


def _tiny_step(pool_size: int = 0, cycle_weight: float = 10.0) -> S.SDGANStep:
    g = torch.Generator().manual_seed(0)
    G = nn.ModuleDict({k: N.init_weights(N.ResnetTranslator(4, 1), g) for k in ("nd", "dn")})
    D = nn.ModuleDict({f"{d}_{i}": N.init_weights(N.PatchCritic(4, 1), g) for d in S.DOMAINS for i in (1, 2)})
    return S.SDGANStep(G, D, lambda ctx: None, alpha=0.2, beta=0.1, cycle_weight=cycle_weight, pool_size=pool_size)


def _batch(seed: int = 0, n: int = 2, side: int = 16) -> GANBatch:
    g = torch.Generator().manual_seed(seed)
    x = {d: torch.rand(n, 3, side, side, generator=g) * 2 - 1 for d in ("normal", "defect")}
    return GANBatch(real=x["defect"], g_input=x["normal"], extra=x)


def test_d2_losses_follow_d2gan_formulas():
    """Step 3: the three D2GAN objectives, value for value (D = softplus(logit)), α = 0.2, β = 0.1.

    Checked to fail: swapping α and β in d2_real_loss, or dropping the log in d2_fake_loss.
    """
    g = torch.Generator().manual_seed(1)
    lr, lf = torch.randn(64, generator=g), torch.randn(64, generator=g)
    d_r, d_f = F.softplus(lr), F.softplus(lf)
    assert torch.allclose(N.d2_real_loss(lr, lf, 0.2), 0.2 * (-d_r.log()).mean() + d_f.mean())
    assert torch.allclose(N.d2_fake_loss(lr, lf, 0.1), d_r.mean() + 0.1 * (-d_f.log()).mean())
    assert torch.allclose(N.d2_generator_loss(lr, lf, 0.1), -d_r.mean() + 0.1 * d_f.log().mean())
    very_negative = torch.tensor([-200.0, -30.0])  # softplus underflows; log D ≈ logit there
    assert torch.isfinite(N.log_softplus(very_negative)).all()
    assert torch.allclose(N.log_softplus(very_negative), very_negative, atol=1e-6)


def test_each_domain_has_two_critics_with_opposite_objectives():
    """Step 3: per domain, D1 is pushed up on real and down on translated images, D2 the reverse, and G
    pushes D1 up and D2 down on its translations (the sign of each gradient on each critic's output).

    Checked to fail: scoring D2 with d2_real_loss (D2 then rewards real images like D1), and feeding
    the real images to D2 in the fake slot.
    """
    step = _tiny_step()  # pool_size 0: the critics are shown exactly the current translations
    logs = {k: [] for k in step.D}
    for k in list(step.D):
        step.D[k] = _Recorder(step.D[k], logs[k], inputs=True)
    batch = _batch()
    fake = {k: v.detach() for k, v in step.generate(batch).items()}
    terms = step.d_terms(SimpleNamespace(generator=torch.Generator().manual_seed(0)), batch, fake, 0)
    assert set(terms) == {"defect_1", "defect_2", "normal_1", "normal_2"}
    for dom in S.DOMAINS:
        for i in (1, 2):
            terms[f"{dom}_{i}"].backward()
            (real_out, real_in), (fake_out, fake_in) = logs[f"{dom}_{i}"]
            assert torch.equal(real_in, batch.extra[dom]) and torch.equal(fake_in, fake[dom]), f"{dom}_{i} inputs"
            sign_real, sign_fake = (-1, 1) if i == 1 else (1, -1)  # minimising: a negative gradient raises the score
            assert bool((real_out.grad * sign_real > 0).all()), f"{dom}_{i} on real images"
            assert bool((fake_out.grad * sign_fake > 0).all()), f"{dom}_{i} on translated images"
    for k in logs:
        logs[k].clear()
    g_terms = step.g_terms(SimpleNamespace(), batch, step.generate(batch))
    for dom in S.DOMAINS:
        g_terms[f"adv_{dom}"].backward(retain_graph=True)
        ((d1_out, _),), ((d2_out, _),) = logs[f"{dom}_1"], logs[f"{dom}_2"]
        assert bool((d1_out.grad < 0).all()) and bool((d2_out.grad > 0).all()), f"G's adversarial term on {dom}"


# -- 4. cycle consistency -----------------------------------------------------------------------------------
def test_cycle_terms_are_lambda_times_l1_of_both_round_trips():
    """Step 4: g/cycle_normal = λ‖G_dn(G_nd(n)) − n‖₁ and g/cycle_defect = λ‖G_nd(G_dn(d)) − d‖₁; λ = 0 drops them.

    Checked to fail: computing the cycle with the wrong translator (G_nd twice).
    """
    step, batch = _tiny_step(cycle_weight=10.0), _batch(3)
    fake = step.generate(batch)
    terms = step.g_terms(SimpleNamespace(), batch, fake)
    n, d = batch.extra["normal"], batch.extra["defect"]
    assert torch.allclose(terms["cycle_normal"], 10 * (step.G["dn"](step.G["nd"](n)) - n).abs().mean())
    assert torch.allclose(terms["cycle_defect"], 10 * (step.G["nd"](step.G["dn"](d)) - d).abs().mean())
    assert not {"cycle_normal", "cycle_defect"} & set(_tiny_step(cycle_weight=0.0).g_terms(SimpleNamespace(), batch, fake))


def test_cycle_term_lowers_the_reconstruction_error():
    """Step 4, behaviour: after the same 30 steps (16 px), ‖G_dn(G_nd(n)) − n‖₁ is lower with λ = 10 than with λ = 0.

    Checked to fail: with the cycle terms removed from g_terms both runs are identical.
    """
    normals, defects = make_toy_batch(4, 16, seed=10), make_toy_anomalies(4, 16)
    errors = []
    for lam in (10.0, 0.0):
        params = {**TINY, "resolution": 16, "cycle_weight": lam, "lr": 1e-3, "decay_start": 1.0}
        gen = S.SDGAN(**params).fit(normals, defects, steps=30)
        x = normals.image * 2 - 1
        with torch.no_grad():
            errors.append(float((gen.G["dn"](gen.G["nd"](x)) - x).abs().mean()))
    assert errors[0] < 0.8 * errors[1], errors  # measured: 0.30 vs 0.49


# -- 3. the history pool ------------------------------------------------------------------------------------
def test_critics_see_past_translations_through_the_pool():
    """Step 3: once the pool is full the critics are shown stored translations of earlier steps (both critics
    of a domain the same ones); with pool_size=0 only the current ones.

    Checked to fail: d_terms passing ``fake[dom]`` to the critics instead of the pool's answer.
    """
    for size in (2, 0):
        step = _tiny_step(pool_size=size)
        seen = {k: [] for k in step.D}
        for k in list(step.D):
            step.D[k] = _Recorder(step.D[k], seen[k], inputs=True)
        ctx = SimpleNamespace(generator=torch.Generator().manual_seed(0))
        earlier = {d: [] for d in S.DOMAINS}
        past_shown = 0
        for i in range(6):
            b = _batch(i)
            current = {k: v.detach() for k, v in step.generate(b).items()}
            for k in seen:
                seen[k].clear()
            step.d_terms(ctx, b, current, i)
            for d in S.DOMAINS:
                (_, real_in), (_, shown1) = seen[f"{d}_1"]
                (_, _), (_, shown2) = seen[f"{d}_2"]
                assert torch.equal(real_in, b.extra[d]) and torch.equal(shown1, shown2)
                for img in shown1:
                    if any(torch.equal(img, c) for c in current[d]):
                        continue
                    assert any(torch.equal(img, e) for e in earlier[d]), f"{d}: shown an image never translated"
                    past_shown += 1
                earlier[d] += list(current[d])
        assert (past_shown > 0) == (size > 0), (size, past_shown)


def test_pool_state_is_checkpointed_for_exact_resume(tmp_path):
    """Step 3 + 5: with the pool full (size 2, batch 2), a run resumed at step 2 ends with the same weights.

    Checked to fail: extra_state returning {} (the resumed run starts with an empty pool).
    """
    args = (make_toy_batch(4, 64, seed=10), make_toy_anomalies(4, 64))
    whole = S.SDGAN(**{**TINY, "pool_size": 2}).fit(*args, steps=4, checkpoint_every=2, checkpoint_dir=tmp_path)
    resumed = S.SDGAN(**{**TINY, "pool_size": 2}).fit(*args, steps=4, resume_from=tmp_path / "step-000002")
    for key in ("G", "D"):
        for name, t in whole.modules()[key].state_dict().items():
            assert torch.equal(t, resumed.modules()[key].state_dict()[name]), f"{key}.{name}"
    assert whole.extra_state() == {} and not list((tmp_path).glob("*.pt"))  # a finished model ships without the pools


# -- 1. unpaired data: the masks of the defects are not used ---------------------------------------------------
def test_fitting_does_not_read_the_defect_masks():
    """Step 1: zeroing the anomalies' masks gives bit-identical weights (SDGAN trains on unpaired images only).

    Checked to fail: multiplying the defect images by (1 − mask) in build.
    """
    a = make_toy_anomalies(4, 64)
    blank = Batch(image=a.image.clone(), mask=torch.zeros_like(a.mask), label=list(a.label), meta=[dict(m) for m in a.meta])
    one, two = fitted(3, a), fitted(3, blank)
    for key in ("G", "D"):
        for name, t in one.modules()[key].state_dict().items():
            assert torch.equal(t, two.modules()[key].state_dict()[name]), f"{key}.{name}"


def test_label_is_the_fitted_type_or_defect():
    """Labels: one fitted type → that type; several → "defect"; ``defect_type`` fits one type of several."""
    a = make_toy_anomalies(4, 64)
    mixed = Batch(image=a.image, mask=a.mask, label=["scratch", "scratch", "hole", "hole"], meta=[{}] * 4)
    assert fitted(1, a).label_name == "scratch"
    assert fitted(1, mixed).label_name == "defect"
    only = fitted(1, mixed, defect_type="hole")
    assert only.label_name == "hole" and set(only.generate(make_toy_batch(2, 64), seed=0).label) <= {"hole", "good"}
    with pytest.raises(ValueError, match="'dent'"):
        fitted(1, mixed, defect_type="dent")


# -- 6. the derived mask and the composition --------------------------------------------------------------------
def test_derived_mask_threshold_and_opening():
    """Step 6: a pixel changed by less than the threshold is not in the mask, one changed by more (in any single
    channel) is; the opening removes an isolated above-threshold speck but keeps a 5×5 block.

    Checked to fail: averaging over channels instead of the channel max; ``>=`` on a pixel changed by exactly τ·0.999.
    """
    x = torch.full((1, 3, 20, 20), 0.5)
    y = x.clone()
    y[:, :, :, :10] += 0.099  # everywhere on the left: just under τ = 0.1
    y[:, 1, 4:9, 12:17] += 0.12  # a 5×5 block, green channel only: over τ
    y[:, 0, 15, 15] += 0.5  # a single-pixel speck
    m = S.derive_mask(x, y, 0.1, open_radius=0, blur=0.0)
    block = torch.zeros_like(m)
    block[..., 4:9, 12:17] = 1
    block[..., 15, 15] = 1
    assert torch.equal(m, block)
    block[..., 15, 15] = 0
    assert torch.equal(S.derive_mask(x, y, 0.1, open_radius=1), block)
    assert not S.derive_mask(x, y, 0.13, open_radius=0)[..., 4:9, 12:17].any()


def test_low_passed_mask_ignores_alternating_texture_errors_and_keeps_a_consistent_change():
    """Step 6 (σ > 0): ±0.3 errors that alternate pixel to pixel (a re-drawn weave) cancel under the blur and stay
    out of the mask, while a 6×6 region darkened by 0.3 is found; per pixel (σ = 0) the weave floods the mask.

    Checked to fail: blurring the absolute change instead of the signed one.
    """
    x = torch.full((1, 3, 24, 24), 0.5)
    weave = 0.3 * (torch.arange(24).view(1, -1) + torch.arange(24).view(-1, 1)).remainder(2).mul(2).sub(1).float()
    y = x + weave
    y[..., 8:14, 8:14] = x[..., 8:14, 8:14] - 0.3
    region = torch.zeros(1, 1, 24, 24)
    region[..., 8:14, 8:14] = 1
    m = S.derive_mask(x, y, 0.15, open_radius=1, blur=1.0)
    assert float((m * region).sum()) >= 16 and float((m * (1 - region)).sum()) <= 12, (m * region).sum()
    assert float(S.derive_mask(x, y, 0.15, open_radius=1, blur=0.0).mean()) > 0.9
    assert torch.equal(S.gaussian_blur(x, 0.0), x) and torch.allclose(S.gaussian_blur(x, 1.5), x)


def test_compose_keeps_the_input_outside_and_compose_false_returns_the_translation():
    """Step 6: compose → the input's own pixels outside the mask and the upsampled translation inside;
    compose=False → the raw (upsampled) translation with the same mask.

    Checked to fail: composing at the working resolution (the 64-px background then comes back resampled).
    """
    gen = fitted(2)
    b = make_toy_batch(3, 64)
    out = gen.generate(b, seed=1)
    gen.params.compose = False
    raw = gen.generate(b, seed=1)
    gen.params.compose = True
    assert torch.equal(raw.mask, out.mask) and out.mask.any()
    m = out.mask.bool().expand_as(b.image)
    assert torch.equal(out.image[~m], b.image[~m])
    assert torch.equal(out.image[m], raw.image[m])
    ks = [s["orientation"] for s in out.samples]
    small = F.interpolate(b.image, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    expect = F.interpolate(gen.translate(small, ks), size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(raw.image, expect, atol=1e-6)


def test_orientation_is_the_per_sample_draw():
    """Step 6: the dihedral draws are invertible; 'random' makes seeds matter, 'identity' makes them not."""
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert len({S.dihedral(x, k).numpy().tobytes() for k in range(8)}) == 8
    assert all(torch.equal(S.undo_dihedral(S.dihedral(x, k), k), x) for k in range(8))
    gen = fitted(2, orientation="identity")
    b = make_toy_batch(2, 64)
    assert torch.equal(gen.generate(b, seed=0).image, gen.generate(b, seed=9).image)
    assert all(s == {"orientation": 0} for s in gen.generate(b, seed=0).samples)


def test_presets_give_the_documented_sizes():
    """Presets: 'paper' = CycleGAN 256², width 64, 6 blocks, 70×70 PatchGAN; 'cpu' = 64², 16, 3 blocks, 2 layers."""
    assert S.SDGAN(preset="paper").params.sizes() == {"resolution": 256, "width": 64, "blocks": 6, "d_width": 64,
                                                      "d_layers": 3}
    assert S.SDGAN(preset="cpu", blocks=6).params.sizes() == {"resolution": 64, "width": 16, "blocks": 6, "d_width": 16,
                                                             "d_layers": 2}
    g = S.SDGAN(preset="paper")
    g._make_modules()
    convs = [m for m in g.D["defect_1"].modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1] and [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert sum(isinstance(m, N._ResBlock) for m in g.G["nd"].modules()) == 6


# -- the shipped checkpoint --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 256])
def test_shipped_fabric_checkpoint_generates_on_toy_fabric(size):
    """The shipped 'fabric' model at its own 64 px and at 256 px input: background kept, masks, label 'defect'."""
    from anoplug.data import open_dataset

    gen = S.SDGAN.from_pretrained("fabric")
    b = open_dataset("toy:fabric", split="train", size=size).batch(range(4))
    out = gen.generate(b, seed=0)
    assert out.image.shape == b.image.shape and out.mask.shape == (4, 1, size, size)
    m = out.mask.bool().expand_as(b.image)
    assert torch.equal(out.image[~m], b.image[~m])
    assert any(lab == "defect" for lab in out.label) and set(out.label) <= {"defect", "good"}
    assert 0 < float(out.mask.mean()) < 0.2
