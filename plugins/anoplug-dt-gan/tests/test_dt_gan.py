"""DT-GAN: the learned-method conformance kit on tiny networks, one test per step of the method, the shipped checkpoint.

Each mechanism test names the step it guards and how it was checked to fail: the step was
disabled once locally (the edit is in the docstring) and the test failed.
"""

from __future__ import annotations

import pytest
import torch
from anoplug_dt_gan import dtgan as DT
from anoplug_dt_gan.networks import binarize

from anoplug.conditions import ConditionError
from anoplug.testing import LearnedGeneratorConformance, make_toy_anomalies, make_toy_batch
from anoplug.types import Batch

TINY = {"resolution": 32, "width": 8, "max_width": 16, "n_down": 2, "n_bottleneck": 1, "style_dim": 8, "latent_dim": 8,
        "mapping_hidden": 16, "batch_size": 4, "ema_decay": 0.5, "alpha_bias": 0.0}


def two_type_defects(n: int = 4, size: int = 64) -> Batch:
    """Toy defects of two types from two "products" (the kit's dark rectangles)."""
    a, b = make_toy_anomalies(n, size, seed=5, label="scratch"), make_toy_anomalies(n, size, seed=6, label="hole")
    b.image = 1 - b.image  # another look for the second type
    out = Batch.cat([a, b])
    out.meta = [{"category": "p1" if i % 2 else "p0"} for i in range(len(out))]
    return out


def normals(n: int = 4, size: int = 64) -> Batch:
    b = make_toy_batch(n, size, seed=10)
    b.meta = [{"category": "p1" if i % 2 else "p0"} for i in range(n)]
    b.object_mask = None
    b.text = None
    return b


@pytest.fixture(scope="module")
def tiny() -> DT.DTGAN:
    return DT.DTGAN(**TINY).fit(normals(), two_type_defects(), steps=2)


@pytest.fixture(scope="module")
def sparse(tiny) -> DT.DTGAN:
    """The tiny model with its alpha logits shifted down, so that part of every image gets alpha exactly 0."""
    import copy

    out = copy.deepcopy(tiny)
    with torch.no_grad():
        out.G["generator"].to_defect[2].bias[3] -= 2.0
    return out


class TestDTGANConformance(LearnedGeneratorConformance):
    generator_name = "dt-gan"
    generator_class = DT.DTGAN
    params = TINY
    bad_params = {"resolution": 48, "lambda_ds": -1.0, "preset": "gpu", "alpha_bias": 20.0}
    entry_module = "anoplug_dt_gan.plugin"

    def fit_data(self):
        return normals(), two_type_defects()


# -- step 1: style codes ---------------------------------------------------------------------------------
def test_step1_mapping_and_style_encoder_have_one_branch_per_domain(tiny):
    """Step 1. Same z / image, other domain → other code; checked failing with every domain routed to branch 0."""
    m, e = tiny.G["mapping"], tiny.G["style"]
    assert len(m.branches) == len(e.heads) == len(tiny.types) + 1 == 3  # good + scratch + hole
    z = torch.randn(1, TINY["latent_dim"], generator=torch.Generator().manual_seed(0)).expand(3, -1)
    y = torch.arange(3)
    with torch.no_grad():
        codes = m(z, y)
        enc = e(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).expand(3, -1, -1, -1), y)
    assert codes.shape == (3, TINY["style_dim"]) and enc.shape == (3, TINY["style_dim"])
    for c in (codes, enc):
        assert not torch.allclose(c[0], c[1]) and not torch.allclose(c[1], c[2])


def test_step1_reference_path_changes_the_output_and_empty_reference_masks_are_left_out(tiny):
    """Step 1 (reference → style encoder). Checked failing with ``style_code`` ignoring ``references`` (mapping path)."""
    b = make_toy_batch(2, 64, seed=3)
    asked = {"defect_type": ["hole", "hole"]}
    ref_a = make_toy_anomalies(2, 64, seed=11).image
    ref_b = 1 - make_toy_anomalies(2, 64, seed=12).image
    latent = tiny.generate(b.with_conditions(**asked), seed=0)
    refs = torch.stack([ref_a, ref_b], 1)  # [2, K=2, 3, H, W]
    with_refs = tiny.generate(b.with_conditions(**asked, references=refs), seed=0)
    assert not torch.equal(latent.image, with_refs.image), "the reference style changed nothing"
    only_a = tiny.generate(b.with_conditions(**asked, references=refs[:, :1]), seed=0)
    assert not torch.equal(only_a.image, with_refs.image)
    masks = torch.zeros(2, 2, 1, 64, 64)
    masks[:, 0, :, 10:30, 10:30] = 1  # the second reference has an empty mask: it is left out
    masked = tiny.generate(b.with_conditions(**asked, references=refs, reference_masks=masks), seed=0)
    assert torch.equal(masked.image, only_a.image), "a reference with an empty mask still shaped the style"


# -- step 2: two-path generator, composition through alpha ---------------------------------------------------
def test_step2_style_changes_the_defect_not_the_background(sparse):
    """Step 2. Outside the alpha mask the output is the input's own bits under any style; only the inside changes.

    Checked failing with the composition replaced by ``image = foreground`` (no alpha) in ``DefectGenerator.forward``.
    """
    tiny = sparse
    x = make_toy_batch(1, 64, seed=4).image
    g = torch.Generator().manual_seed(2)
    s1, s2 = torch.randn(1, TINY["style_dim"], generator=g), torch.randn(1, TINY["style_dim"], generator=g)
    with torch.no_grad():
        o1, a1 = tiny.translate(x, s1)
        o2, a2 = tiny.translate(x, s2)
        bg1 = tiny.G["generator"](DT.resize(x, 32) * 2 - 1, s1).background
        bg2 = tiny.G["generator"](DT.resize(x, 32) * 2 - 1, s2).background
        xs = DT.resize(x, 32) * 2 - 1
        net = tiny.G["generator"](xs, s1)
    off = (net.mask == 0).expand_as(xs)
    assert int(off.sum()) > 0 and torch.equal(net.image[off], xs[off]), "the network does not compose through alpha"
    zero = ((a1 == 0) & (a2 == 0)).expand_as(x)
    assert int(zero.sum()) > 0, "every pixel is inside the alpha mask"
    assert torch.equal(o1[zero], x[zero]) and torch.equal(o2[zero], x[zero])
    assert not torch.equal(o1, o2), "two style codes gave the same image"
    assert torch.equal(bg1, bg2), "the background path depends on the style code"


def test_step2_alpha_is_binarised_with_a_straight_through_gradient():
    """Step 2 (composition mask). Forward 1[α > 0.5], backward dα; checked failing with ``binarize`` returning α."""
    a = torch.tensor([0.1, 0.49, 0.51, 0.9], requires_grad=True)
    m = binarize(a)
    assert m.tolist() == [0.0, 0.0, 1.0, 1.0]
    (m * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert a.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


# -- step 3: multi-task discriminator, non-saturating + R1, EMA ---------------------------------------------
def test_step3_discriminator_judges_each_type_with_its_own_head(tiny):
    """Step 3. D(x, y) is head y's logit and its loss moves head y only; checked failing with D averaging its heads."""
    D = tiny.D
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 1, 0, 1])
    out = D(x, y)
    assert torch.allclose(out, D.all_heads(x)[torch.arange(4), y])
    D.zero_grad(set_to_none=True)
    D(x, torch.ones(4, dtype=torch.long)).sum().backward()
    w = D.heads.weight.grad.flatten(1)
    assert float(w[0].abs().sum()) == 0 and float(w[1].abs().sum()) > 0
    D.zero_grad(set_to_none=True)


def _step(gen: DT.DTGAN, step: int, **params) -> tuple[DT.DTGANStep, DT.GANBatch]:
    data = gen.build(normals(), two_type_defects(), torch.Generator().manual_seed(0))
    for k, v in params.items():
        setattr(gen.params, k, v)
    gan = DT.DTGANStep(gen, data, total_steps=10)
    ctx = DT.StepContext(step, 0, torch.Generator().manual_seed(step), None)
    return gan, gan.draw(ctx), ctx


def test_step3_r1_on_real_defects_matches_stargan_v2():
    """Step 3. d/r1 = ½·λ_reg·E‖∇ₓD(x_real)‖² and absent at λ_reg = 0; checked failing with the R1 term removed."""
    gen = DT.DTGAN(**TINY)
    gan, batch, ctx = _step(gen, 0)
    fake = gan.generate(batch)
    terms = gan.d_terms(ctx, batch, fake, 0)
    real = batch.real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gen.D(real, batch.d_cond[0]).sum(), real)
    assert torch.allclose(terms["r1"], 0.5 * grad.flatten(1).square().sum(1).mean(), rtol=1e-4)
    gen.params.lambda_reg = 0.0
    gan = DT.DTGANStep(gen, gan.data, 10)
    assert "r1" not in gan.d_terms(ctx, batch, fake, 0)


def test_step3_generator_networks_are_used_through_their_ema():
    """Step 3 (EMA 0.999). After fit, G holds the average, D its last weights; checked failing with ``ema = {}``."""
    assert DT.DTGAN().ema == {"G": 0.999}
    a = DT.DTGAN(**{**TINY, "ema_decay": 0.5}).fit(normals(), two_type_defects(), steps=3)
    b = DT.DTGAN(**{**TINY, "ema_decay": 0.0}).fit(normals(), two_type_defects(), steps=3)
    assert all(torch.equal(p, q) for p, q in zip(a.D.state_dict().values(), b.D.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(a.G.state_dict().values(), b.G.state_dict().values()))


# -- step 4: the losses -----------------------------------------------------------------------------------------
def test_step4_every_generator_term_is_the_stated_formula():
    """Step 4. adv, sty, ds, cyc, bg, mask recomputed by hand; checked failing with each term dropped in turn."""
    gen = DT.DTGAN(**TINY)
    gan, batch, ctx = _step(gen, 0)
    torch.manual_seed(0)
    fake = gan.generate(batch)
    terms = gan.g_terms(ctx, batch, fake)
    assert set(terms) == {"adv", "sty", "ds", "cyc", "bg", "mask"}
    G, e, out = gen.G, batch.extra, fake["out"]
    x, y = e["x_src"], e["y"]
    with torch.no_grad():
        adv = torch.nn.functional.softplus(-gen.D(out.image, y - 1)).mean()
        sty = (G["style"](out.image, y) - fake["s"]).abs().mean()
        other = G["generator"](x, G["mapping"](e["z2"], y)).image
        rec = G["generator"](out.image, G["style"](x, torch.zeros_like(y)))
        expect = {"adv": adv, "sty": sty, "ds": -1.0 * (out.image - other).abs().mean(),
                  "cyc": (rec.image - x).abs().mean(),
                  "bg": (out.background - x).abs().mean() + (rec.background - x).abs().mean(),
                  "mask": 5.0 * ((out.alpha > 0.5).float().flatten(1).mean(1) - e["area"]).abs().mean()}
    for k, v in expect.items():
        assert torch.allclose(terms[k].detach(), v, rtol=1e-4, atol=1e-6), k


def test_step4_style_diversification_decays_linearly_to_zero():
    """Step 4 (λ_ds decay, StarGAN v2). Checked failing with a constant λ_ds."""
    gen = DT.DTGAN(**TINY)
    gan, _, _ = _step(gen, 0, lambda_ds=2.0)
    assert [gan.lambda_ds(t) for t in (0, 5, 10, 20)] == [2.0, 1.0, 0.0, 0.0]
    gan10, batch, ctx = _step(gen, 10)
    assert float(gan10.g_terms(ctx, batch, gan10.generate(batch))["ds"].detach()) == 0.0
    gan0, batch0, ctx0 = _step(gen, 0)
    assert float(gan0.g_terms(ctx0, batch0, gan0.generate(batch0))["ds"].detach()) < 0


def test_step4_reference_steps_update_the_generator_only():
    """Step 4 (StarGAN v2's reference G step). Checked failing with ``_no_param_grads`` removed from ``g_terms``."""
    gen = DT.DTGAN(**TINY)
    for step, mapping_moves in ((0, True), (1, False)):
        gan, batch, ctx = _step(gen, step)
        assert batch.extra["mode"] == ("latent" if step == 0 else "reference")
        gen.G.zero_grad(set_to_none=True)
        sum(gan.g_terms(ctx, batch, gan.generate(batch)).values()).backward()
        has = {k: any(p.grad is not None for p in m.parameters()) for k, m in gen.G.items()}
        assert has["generator"] and has["mapping"] == mapping_moves and has["style"] == mapping_moves, (step, has)


def test_step4_batches_pair_a_defect_with_a_normal_of_its_product():
    """Step 4 (data). The source normal comes from the real defect's product; checked failing with any normal drawn."""
    gen = DT.DTGAN(**TINY)
    data = gen.build(normals(), two_type_defects(), torch.Generator().manual_seed(0))
    gan = DT.DTGANStep(gen, data, 10)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        b = gan.draw(DT.StepContext(0, 0, g, None))
        src = b.extra["x_src"]
        for i in range(len(src)):
            k = next(k for k in range(len(data["defects"])) if torch.equal(data["defects"][k], b.real[i]))
            j = next(j for j in range(len(data["normals"])) if torch.equal(data["normals"][j], src[i]))
            assert j in data["normals_of"][int(data["defect_product"][k])]
            assert int(data["defect_domain"][k]) == int(b.extra["y"][i])


# -- step 5: generation -------------------------------------------------------------------------------------------
def test_step5_mask_is_alpha_and_visible_change_at_any_input_size(sparse):
    """Step 5. mask ⊆ {α > 0.5} ∩ {changed}; α = 0 pixels are the input's; checked failing with mask = α > 0.5 alone."""
    import copy

    tiny = copy.deepcopy(sparse)
    tiny.params.change_tol = 0.2  # large, so that some alpha pixels do not count as a visible change
    for size in (32, 96):
        b = make_toy_batch(2, size, seed=8)
        out = tiny.generate(b.with_conditions(defect_type=["scratch", "hole"]), seed=1)
        assert out.label == ["scratch", "hole"]
        changed = (out.image - b.image).abs().amax(1, keepdim=True) > tiny.params.change_tol
        assert torch.equal(out.mask.bool(), out.mask.bool() & changed), "the mask holds pixels that did not change"
        with torch.no_grad():
            s = tiny.style_code(tiny.types.index("hole") + 1, z=out.samples[1]["z"])
            again, alpha = tiny.translate(b.image[1:2], s)
        assert torch.equal(again, out.image[1:2])
        assert bool(((alpha > 0.5) | ~out.mask[1:2].bool()).all())
        assert int(alpha.sum()) > int(out.mask[1:2].sum()), "the test needs alpha pixels without a visible change"
        keep = (alpha == 0).expand_as(again)
        assert int(keep.sum()) > 0 and torch.equal(again[keep], b.image[1:2][keep])


def test_step5_unknown_defect_type_is_named(tiny):
    with pytest.raises(ConditionError, match="conditions.defect_type 'crack'"):
        tiny.generate(make_toy_batch(1, 64).with_conditions(defect_type=["crack"]), seed=0)


# -- the shipped checkpoint ----------------------------------------------------------------------------------------
def test_shipped_textures_checkpoint_transfers_defects_on_toy_data_at_64_and_256():
    """The ONE shipped checkpoint: fitted on four products' defects; generates on toy fabric at 64² and 256²."""
    from anoplug.data.toy import ToyDataset

    gen = DT.DTGAN.from_pretrained("textures")
    assert gen.is_fitted and gen.params.preset == "cpu"
    assert {"hole", "stain", "contamination", "thread_break", "scratch", "crack"} <= set(gen.types)
    assert {"fabric", "metal", "carpet", "tile"} <= set(gen.products)
    for size in (64, 256):
        b = ToyDataset("fabric", "train", size=size, length=4).batch(range(4))
        out = gen.generate(b.with_conditions(defect_type=["scratch", "hole", "stain", "crack"]), seed=0)
        assert out.image.shape == b.image.shape and bool(torch.isfinite(out.image).all())
        assert sum(lab != "good" for lab in out.label) >= 3, out.label
        outside = (out.mask == 0).expand_as(b.image)
        assert float((out.image - b.image).abs()[outside].mean()) < 2e-3  # the background is (almost) the input's
