"""anoplug.diffusion.sampling: the one denoising loop and its hooks.

Each test targets one hook's mechanism and fails when that mechanism is removed. The
reference-loop test pins the loop to diffusers' scheduler, so the plugins' outputs (which
were checked bit-identical to the former ``blended_sample``) stay honest without the old code.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from anoplug.diffusion import attention as A  # noqa: E402
from anoplug.diffusion import sampling as S  # noqa: E402
from anoplug.diffusion import tiny  # noqa: E402
from anoplug.diffusion.blend import step_index  # noqa: E402
from anoplug.diffusion.loading import Parts, make_scheduler  # noqa: E402


@pytest.fixture(scope="module")
def parts():
    return Parts.from_pipeline(tiny.tiny_sd_pipeline(seed=0)).freeze()


@pytest.fixture(scope="module")
def texts(parts):
    with torch.no_grad():
        return parts.encode_text(["a photo of a screw with a scratch"] * 2), parts.encode_text([""] * 2)


def unet_call(parts):
    return lambda x, t, c: parts.unet(x, t, encoder_hidden_states=c).sample


def rngs(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def zeros_model(log=None):
    def model(x, t, cond):
        if log is not None:
            log.append((int(t), x.clone()))
        return torch.zeros_like(x)
    return model


def half_mask(b=2, h=16, w=16, right=False):
    """1 = generate on the left half (or the right one)."""
    m = torch.zeros(b, 1, h, w)
    m[..., slice(w // 2, None) if right else slice(None, w // 2)] = 1
    return m


class Record(S.Hook):
    """Keeps (i, t, x) after every step."""

    def __init__(self):
        self.after = []

    def after_step(self, ctx, x):
        self.after.append((ctx.i, int(ctx.t), x.clone()))
        return x


def replayed_noise(seeds, shape, n):
    """The first ``n`` standard normal draws of each seed's generator, ``[n, B, *shape]``."""
    gens = rngs(*seeds)
    return torch.stack([torch.stack([torch.randn(shape, generator=g) for g in gens]) for _ in range(n)])


# -- blending ---------------------------------------------------------------------------------------------------
def test_blend_before_puts_q_z0_t_in_the_background_with_a_per_step_mask():
    """η=0: the only draws are x_T and one per step for q(z0, t), so the model input's background is known exactly."""
    sched = make_scheduler("ddim")
    z0 = torch.full((2, 4, 16, 16), 3.0)
    masks = [half_mask(), half_mask(right=True)]
    seen_masks = []

    def mask(i, t):
        seen_masks.append((i, t))
        return masks[i % 2]

    log = []
    S.sample(zeros_model(log), sched, shape=z0.shape, rngs=rngs(0, 1), num_steps=8, hooks=[S.BlendBefore(z0, mask)])
    noise = replayed_noise((0, 1), (4, 16, 16), 9)
    ac = sched.alphas_cumprod
    assert [i for i, _ in seen_masks] == list(range(8)) and [t for _, t in seen_masks] == [t for t, _ in log]
    for k, (t, x) in enumerate(log):
        bg = 1 - masks[k % 2]
        want = ac[t].sqrt() * z0 + (1 - ac[t]).sqrt() * noise[k + 1]
        assert torch.allclose((x * bg), (want * bg), atol=1e-5), f"step {k}: background is not q(z0, t)"
        assert (x * (1 - bg) - want * (1 - bg)).abs().max() > 0.1  # the generated region is not overwritten


def test_blend_after_uses_noise_level_t_off_by_one():
    sched = make_scheduler("ddim")
    z0 = torch.full((2, 4, 16, 16), 3.0)
    rec = Record()
    S.sample(zeros_model(), sched, shape=z0.shape, rngs=rngs(0, 1), num_steps=8, hooks=[S.BlendAfter(z0, half_mask()), rec])
    noise = replayed_noise((0, 1), (4, 16, 16), 9)
    ac, ts = sched.alphas_cumprod, [int(t) for t in sched.timesteps]
    for k, (i, t, x) in enumerate(rec.after):
        assert i == k
        assert t == ts[k]
        at_t = ac[t].sqrt() * z0 + (1 - ac[t]).sqrt() * noise[k + 1]
        assert torch.allclose(x[..., 8:], at_t[..., 8:], atol=1e-5), f"step {k}: the background is not q(z0, t)"
        if k + 1 < len(ts):  # the level of x_{t-1} would be t_prev: the original does not use it
            t_prev = ts[k + 1]
            at_prev = ac[t_prev].sqrt() * z0 + (1 - ac[t_prev]).sqrt() * noise[k + 1]
            assert (x[..., 8:] - at_prev[..., 8:]).abs().max() > 0.05


def test_without_a_blend_the_background_is_not_kept():
    z0 = torch.full((2, 4, 16, 16), 3.0)
    kw = dict(shape=z0.shape, rngs=rngs(0, 1), num_steps=8, eta=1.0)
    kept = S.sample(zeros_model(), make_scheduler("ddim"), hooks=[S.BlendBefore(z0, half_mask())], **kw)
    free = S.sample(zeros_model(), make_scheduler("ddim"), **{**kw, "rngs": rngs(0, 1)})
    assert abs(float(kept[..., 8:].mean()) - 3.0) < 0.2
    assert abs(float(free[..., 8:].mean()) - 3.0) > 1.0


def test_pixel_x0_blend_pastes_source_pixels():
    src = torch.rand(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    ident = lambda x: x  # latent == pixels: the paste is visible directly
    kw = dict(shape=src.shape, num_steps=6)
    out = S.sample(zeros_model(), make_scheduler("ddim"), rngs=rngs(0, 1), **kw,
                   hooks=[S.PixelX0Blend(ident, ident, src, half_mask(), from_fraction=0.0)])
    late = S.sample(zeros_model(), make_scheduler("ddim"), rngs=rngs(0, 1), **kw,
                    hooks=[S.PixelX0Blend(ident, ident, src, half_mask(), from_fraction=1.0)])  # never reached
    none = S.sample(zeros_model(), make_scheduler("ddim"), rngs=rngs(0, 1), **kw)
    assert (out[..., 8:] - src[..., 8:]).abs().max() < 1e-3
    assert (none[..., 8:] - src[..., 8:]).abs().max() > 0.1 and torch.equal(late, none)
    assert (out[..., :8] - none[..., :8]).abs().max() < 1e-5  # inside the mask: untouched by the paste
    assert step_index(0.5, 50) == 25 and step_index(0.5, 4) == 2


def test_final_composite_and_exact_paste_run_on_the_decoded_output():
    gen = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    src = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    m = torch.zeros(1, 1, 32, 32)
    m[..., 8:24, 8:24] = 1
    run = lambda hooks: S.sample(zeros_model(), make_scheduler("ddim"), shape=(1, 4, 8, 8), rngs=rngs(0), num_steps=2,
                                 hooks=hooks, decode=lambda z: gen)
    pasted = run([S.ExactPaste(src, m)])
    assert torch.equal(pasted[..., :4, :], src[..., :4, :]) and torch.equal(pasted[..., 12:20, 12:20], gen[..., 12:20, 12:20])
    comp = run([S.FinalComposite(src, m, sigma=2.0)])
    assert (comp[..., 0, 0] - src[..., 0, 0]).abs().max() < 1e-6  # far from the mask: the source
    assert (comp[..., 15, 15] - gen[..., 15, 15]).abs().max() < 1e-3  # deep inside: the generated pixels
    assert not torch.equal(comp[..., 8, 8:24], gen[..., 8, 8:24])  # the edge is blended
    both = run([S.FinalComposite(src, m, sigma=2.0), S.ExactPaste(src, m)])  # composite first, then the paste
    assert torch.equal(both[..., 12:20, 12:20], comp[..., 12:20, 12:20]) and torch.equal(both[..., :8, :], src[..., :8, :])


# -- the loop -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["before", "after", "cfg"])
def test_the_loop_matches_a_reference_loop_on_diffusers_scheduler(parts, texts, variant):
    """An independent loop written here on DDIMScheduler directly (η=1, the AnomalyDiffusion setting): bit-identical."""
    cond, unc = texts
    z0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    m = half_mask()
    hooks = {"before": [S.BlendBefore(z0, m)], "after": [S.BlendAfter(z0, m)],
             "cfg": [S.ClassifierFreeGuidance(unc, 4.0)]}[variant]
    new = S.sample(unet_call(parts), make_scheduler("ddim"), shape=z0.shape, rngs=rngs(7, 8), num_steps=4, eta=1.0,
                   cond=cond, hooks=hooks)

    sched, gens = make_scheduler("ddim"), rngs(7, 8)
    randn = lambda: torch.stack([torch.randn(4, 16, 16, generator=g) for g in gens])
    sched.set_timesteps(4)
    x = randn() * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            if variant == "before":
                x = m * x + (1 - m) * sched.add_noise(z0, randn(), t.reshape(1))
            if variant == "cfg":
                eu, ec = parts.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([unc, cond])).sample.chunk(2)
                eps = eu + 4.0 * (ec - eu)
            else:
                eps = parts.unet(x, t, encoder_hidden_states=cond).sample
            x = sched.step(eps, t, x, eta=1.0, generator=gens).prev_sample
            if variant == "after":
                x = m * x + (1 - m) * sched.add_noise(z0, randn(), t.reshape(1))
    assert torch.equal(new, x)


def test_a_sample_does_not_depend_on_its_batch(parts, texts):
    cond, unc = texts
    cond3, unc3 = torch.cat([cond, cond[:1]]), torch.cat([unc, unc[:1]])
    z0 = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    m = half_mask(3)

    def run(sl, seeds):
        return S.sample(unet_call(parts), make_scheduler("ddim"), shape=z0[sl].shape, rngs=rngs(*seeds), num_steps=4, eta=1.0,
                        cond=cond3[sl], hooks=[S.BlendBefore(z0[sl], m[sl]), S.ClassifierFreeGuidance(unc3[sl], 3.0)])

    full = run(slice(0, 3), (7, 8, 9))
    one = run(slice(1, 2), (8,))
    assert torch.allclose(full[1:2], one, atol=1e-5)
    assert (full[0] - full[1]).abs().max() > 0.1  # different seeds, different samples


def test_bad_arguments_are_named():
    model, sched = zeros_model(), make_scheduler("ddim")
    with pytest.raises(ValueError, match="one generator per sample"):
        S.sample(model, sched, shape=(2, 4, 8, 8), rngs=rngs(0), num_steps=2)
    with pytest.raises(ValueError, match="either x_T or shape"):
        S.sample(model, sched, rngs=rngs(0), num_steps=2)
    with pytest.raises(ValueError, match="at most one guiding hook"):
        S.sample(model, sched, shape=(1, 4, 8, 8), rngs=rngs(0), num_steps=2, cond=torch.zeros(1, 3),
                 hooks=[S.ClassifierFreeGuidance(torch.zeros(1, 3), 2.0), S.ClassifierFreeGuidance(torch.zeros(1, 3), 3.0)])


# -- guidance -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [True, False])
def test_cfg_scale_one_is_conditional_only_and_a_larger_scale_changes_the_output(parts, texts, batched):
    cond, unc = texts
    run = lambda hooks: S.sample(unet_call(parts), make_scheduler("ddim"), shape=(2, 4, 16, 16), rngs=rngs(1, 2),
                                 num_steps=4, cond=cond, hooks=hooks)
    plain = run([])
    one = run([S.ClassifierFreeGuidance(unc, 1.0, batched=batched)])
    four = run([S.ClassifierFreeGuidance(unc, 4.0, batched=batched)])
    other = run([S.ClassifierFreeGuidance(unc, 4.0, batched=not batched)])
    assert torch.allclose(one, plain, atol=1e-4)
    assert (four - plain).abs().max() > 1e-2
    assert torch.allclose(four, other, atol=1e-4)  # one batched pass and two passes compute the same guidance


# -- cross-attention ------------------------------------------------------------------------------------------
class InputsOfCond(S.Hook):
    """The conditional model input of every pass: (i, x)."""

    def __init__(self):
        self.seen = []

    def before_model(self, ctx, x, branch):
        if branch != "uncond":
            self.seen.append((ctx.i, (x.chunk(2)[1] if branch == "both" else x).clone()))


class WeightSpy(S.Hook):
    """The re-weighting map in force during every pass: (branch, weight). List it after the re-weighting hook."""

    def __init__(self, unet):
        self.unet, self.seen = unet, []

    def before_model(self, ctx, x, branch):
        self.seen.append((branch, ctx.attention_processors(self.unet)[0].weight))


@pytest.mark.parametrize("batched", [True, False])
def test_capture_keeps_conditional_maps_of_the_chosen_layers_per_step(parts, texts, batched):
    cond, unc = texts
    layers = A.cross_attention_layers(parts.unet)
    chosen = [layers[0], layers[-1]]
    cap, inputs = S.CaptureCrossAttention(parts.unet, chosen), InputsOfCond()
    S.sample(unet_call(parts), make_scheduler("ddim"), shape=(2, 4, 16, 16), rngs=rngs(1, 2), num_steps=3, cond=cond,
             hooks=[inputs, S.ClassifierFreeGuidance(unc, 4.0, batched=batched), cap])
    assert len(cap.maps) == 3 and all(set(step) == set(chosen) for step in cap.maps)
    assert not any(isinstance(p, A.AnoplugAttnProcessor) for p in parts.unet.attn_processors.values())  # restored
    sched = make_scheduler("ddim")
    sched.set_timesteps(3)
    for (i, x), step in zip(inputs.seen, cap.maps):
        state = A.AttentionState(latent_size=(16, 16))
        with A.attention_processors(parts.unet, state, capture=chosen), torch.no_grad():
            parts.unet(x, sched.timesteps[i], encoder_hidden_states=cond)
        for n in chosen:
            assert step[n].shape == state.maps[n][-1].shape and step[n].shape[0] == 2
            assert torch.allclose(step[n], state.maps[n][-1], atol=1e-5), f"step {i} {n}: not the conditional maps"


def test_reweighting_acts_only_through_the_chosen_token_columns(parts, texts):
    cond, unc = texts
    w = torch.ones(2, 1, 16, 16)
    w[..., :8] = 3.0
    cols = torch.zeros(cond.shape[1], dtype=torch.bool)
    cols[[5, 6, 9]] = True  # "screw", "with", "scratch"

    def run(*hooks, shape=(2, 4, 16, 16)):
        return S.sample(unet_call(parts), make_scheduler("ddim"), shape=shape, rngs=rngs(1, 2), num_steps=3, cond=cond,
                        hooks=list(hooks))

    off = run(S.ReweightCrossAttention(parts.unet, cols, w, layers=[]))  # the processors, with no layer re-weighted
    on = run(S.ReweightCrossAttention(parts.unet, cols, w))
    no_columns = run(S.ReweightCrossAttention(parts.unet, torch.zeros_like(cols), w))
    unit = run(S.ReweightCrossAttention(parts.unet, cols, torch.ones_like(w)))
    assert (on - off).abs().max() > 1e-3
    assert torch.equal(no_columns, off) and torch.equal(unit, off)
    # with CFG the unconditional half is never re-weighted (its prompt has no placeholders to steer)
    per_pass = lambda ctx, x: w
    spy_b, spy_t = WeightSpy(parts.unet), WeightSpy(parts.unet)
    batched = run(S.ClassifierFreeGuidance(unc, 4.0, batched=True), S.ReweightCrossAttention(parts.unet, cols, per_pass), spy_b)
    two = run(S.ClassifierFreeGuidance(unc, 4.0, batched=False), S.ReweightCrossAttention(parts.unet, cols, per_pass), spy_t)
    assert [b for b, _ in spy_t.seen] == ["cond", "uncond"] * 3 and [b for b, _ in spy_b.seen] == ["both"] * 3
    assert all(torch.equal(wt, w) if b == "cond" else wt is None for b, wt in spy_t.seen)
    assert all(torch.equal(wt[:2], torch.ones_like(w)) and torch.equal(wt[2:], w) for _, wt in spy_b.seen)
    assert torch.allclose(batched, two, atol=1e-4)


# -- test-time latent optimisation -------------------------------------------------------------------------
def test_latent_optimization_lowers_an_x0_objective_with_frozen_weights(parts, texts):
    cond, _ = texts
    region = half_mask()
    objective = lambda probe: (probe.x0 * region).mean()  # push x̂0 down inside the region
    opt = S.LatentOptimization(objective, iterations=3, step_size=lambda i, n: 20.0 * (1 - i / n))
    run = lambda hooks: S.sample(unet_call(parts), make_scheduler("ddim"), shape=(2, 4, 16, 16), rngs=rngs(1, 2),
                                 num_steps=4, cond=cond, hooks=hooks)
    plain, optimised = run([]), run([opt])
    assert not optimised.requires_grad and torch.is_grad_enabled()  # no graph out, the caller's grad mode is back
    assert all(p.grad is None and not p.requires_grad for p in parts.unet.parameters())
    assert len(opt.losses) == 4 * 3
    first, last = opt.losses[0][1], opt.losses[2][1]
    assert last < first, "the inner iterations did not lower the objective"
    assert float((optimised * region).mean()) < float((plain * region).mean()) - 0.05
    assert (optimised * (1 - region) - plain * (1 - region)).abs().mean() < (optimised * region - plain * region).abs().mean()


def test_latent_optimization_raises_attention_on_a_token_through_captured_maps(parts, texts):
    cond, _ = texts
    layer = A.cross_attention_layers(parts.unet)[1]
    token = 9  # "scratch"; attention of the random tiny model is near uniform (~1/77), hence the large step
    got_grad = []

    def objective(probe):
        maps = probe.attention[layer]  # [B, pixels, tokens], conditional, with gradients
        got_grad.append(maps.requires_grad)
        return -100 * maps[..., token].mean()

    def run(hooks):
        cap = S.CaptureCrossAttention(parts.unet, [layer])
        S.sample(unet_call(parts), make_scheduler("ddim"), shape=(2, 4, 16, 16), rngs=rngs(3, 4), num_steps=3, cond=cond,
                 hooks=[cap, *hooks])
        return torch.stack([step[layer][..., token].mean() for step in cap.maps])

    opt = S.LatentOptimization(objective, iterations=2, step_size=1000.0, active=lambda i, n: i < 2)
    plain, raised = run([]), run([opt])
    assert got_grad and all(got_grad)
    assert sorted({i for i, _ in opt.losses}) == [0, 1]  # active only where asked
    assert float(raised[:2].mean()) > float(plain[:2].mean()) * 1.02


def test_sample_runs_schedulers_whose_step_takes_no_generator():
    """PNDM (Stable Diffusion's default) adds no noise and its step takes neither ``generator`` nor ``eta``:
    the loop passes only what a scheduler's step accepts (it used to raise TypeError on PNDM)."""
    from diffusers import DDPMScheduler, PNDMScheduler

    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = S.sample(zeros_model(), PNDMScheduler(skip_prk_steps=True), x_T, rngs=rngs(1, 2), num_steps=5, eta=0.5)
    assert out.shape == x_T.shape and torch.isfinite(out).all()
    # a stochastic scheduler still draws its variance noise from each sample's own generator
    a = S.sample(zeros_model(), DDPMScheduler(), x_T, rngs=rngs(1, 2), num_steps=5)
    b = S.sample(zeros_model(), DDPMScheduler(), x_T[:1], rngs=rngs(1), num_steps=5)
    assert torch.equal(a[:1], b) and not torch.equal(a, S.sample(zeros_model(), DDPMScheduler(), x_T, rngs=rngs(3, 4),
                                                               num_steps=5))
