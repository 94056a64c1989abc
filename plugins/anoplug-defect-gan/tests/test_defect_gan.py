"""Defect-GAN: the learned-generator kit on a tiny configuration, plus one test per step of the method.

Each mechanism test says which step it covers and how it was checked to fail with that step
removed (the step was disabled once locally and the test run). Tests on trained behaviour use
the shipped "fabric" checkpoint (64 px, cpu preset), which loads in well under a second.
"""

from __future__ import annotations

import math

import pytest
import torch
from anoplug_defect_gan import defect_gan as DG
from anoplug_defect_gan.networks import AdaptiveNoise
from torch.nn.utils import parametrize

from anoplug.conditions import ConditionError
from anoplug.data import open_dataset
from anoplug.testing import LearnedGeneratorConformance, make_toy_batch
from anoplug.train import StepContext
from anoplug.types import Batch

TINY = {"resolution": 32, "width": 8, "n_down": 2, "n_res": 1, "critic_width": 8, "critic_blocks": 3,
        "spade_hidden": 8, "batch_size": 2, "fit_steps": 2}


def toy_defects(size: int = 64) -> Batch:
    """Two defect types with masks: dark bars ("scratch") and bright squares ("hole")."""
    b = make_toy_batch(6, size, seed=7)
    q = size // 64
    b.mask[:3, :, 10 * q:40 * q, 20 * q:26 * q] = 1
    b.mask[3:, :, 30 * q:46 * q, 30 * q:46 * q] = 1
    dark = b.image * 0.3
    bright = (b.image + 0.6).clamp(0, 1)
    kind = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.bool)[:, None, None, None]
    b.image = torch.where(b.mask.bool().expand_as(b.image), torch.where(kind, bright, dark), b.image)
    b.label = ["scratch"] * 3 + ["hole"] * 3
    return b


def tiny(steps: int = 2, **params) -> DG.DefectGAN:
    return DG.DefectGAN(**{**TINY, **params}).fit(make_toy_batch(4, 64, seed=10), toy_defects(), steps=steps)


@pytest.fixture(scope="module")
def shipped() -> DG.DefectGAN:
    torch.set_num_threads(1)
    return DG.DefectGAN.from_pretrained("fabric")


@pytest.fixture(scope="module")
def fabric() -> Batch:
    return open_dataset("toy:fabric", split="train", size=64).all()[:4]


def square(size: int, y: int, x: int, side: int, n: int = 1) -> torch.Tensor:
    m = torch.zeros(n, 1, size, size)
    m[..., y: y + side, x: x + side] = 1
    return m


class TestDefectGANConformance(LearnedGeneratorConformance):
    generator_name = "defect-gan"
    generator_class = DG.DefectGAN
    params = TINY
    bad_params = {"layers": 0, "mask_threshold": 1.5, "preset": "gpu", "resolution": 30}
    entry_module = "anoplug_defect_gan.plugin"

    def fit_data(self):
        return make_toy_batch(4, 64, seed=10), toy_defects()


# -- step 1: the SD map (SPADE) places the defect; the class channel chooses its kind -------------------------
def test_sd_map_moves_where_the_defect_appears(shipped, fabric):
    """Step 1 (SPADE on the SD map). Checked: with SPADE's γ/β fed an all-normal map instead of S the
    generated masks no longer follow the target (the test fails)."""
    one = fabric[[0, 1]]
    for y, x in ((6, 6), (38, 38)):
        target = square(64, y, x, 20, 2)
        out = shipped.generate(one.with_conditions(target_mask=target, defect_type=["hole", "stain"]), seeds=[0, 1])
        for i in range(2):
            m = out.mask[i, 0]
            assert float(m.sum()) >= 20, f"sample {i}: almost nothing generated in the SD map at ({y},{x})"
            inside = float((m * target[i, 0]).sum() / m.sum())
            assert inside > 0.8, f"sample {i}: only {inside:.0%} of the mask lies in the SD map at ({y},{x})"


def test_class_condition_changes_the_defect(shipped, fabric):
    """Step 1 (the class channel of the SD map). Same images, SD map and seeds, another defect type: the
    defect's pixels change far more than another seed changes them (each type has its own look).
    Checked: writing every type into the same SD channel makes the between-type change 0 (fails)."""
    batch = fabric[[0, 1, 2, 3]]
    target = square(64, 20, 20, 24, 4)

    def make(t: str, seed: int) -> torch.Tensor:
        asked = batch.with_conditions(target_mask=target, defect_type=[t] * 4)
        return shipped.generate(asked, seeds=[seed + i for i in range(4)]).image

    region = target.bool().expand(-1, 3, -1, -1)
    first = {t: make(t, 0) for t in shipped.types}
    within = max(float((first[t] - make(t, 100)).abs()[region].mean()) for t in shipped.types[:2])
    between = min(float((first[a] - first[b]).abs()[region].mean())
                  for a in shipped.types for b in shipped.types if a < b)
    assert between > 0.05 and between > 10 * within, f"type changes the defect by {between:.3f}, a seed by {within:.4f}"


def test_adaptive_noise_varies_the_defect_between_seeds(shipped, fabric):
    """Step 1 (adaptive noise). The same draw records (type, SD map) with other seeds give other pixels;
    with every learned noise multiplier at 0 they give the same bytes. Checked: dropping the noise
    input (h + w·n → h) makes the first assertion fail."""
    batch = fabric[[0, 1]]
    first = shipped.generate(batch, seeds=[0, 1])
    other = shipped.generate(batch, seeds=[5, 6], samples=first.samples)
    assert float((first.image - other.image).abs().max()) > 1e-3, "the noise does not change the output"
    saved = {n: m.weight.detach().clone() for n, m in shipped.G.named_modules() if isinstance(m, AdaptiveNoise)}
    assert saved and any(float(w.abs().max()) > 0 for w in saved.values()), "no learned noise multiplier"
    try:
        for m in shipped.G.modules():
            if isinstance(m, AdaptiveNoise):
                m.weight.data.zero_()
        a = shipped.generate(batch, seeds=[0, 1])
        b = shipped.generate(batch, seeds=[5, 6], samples=a.samples)
        assert torch.equal(a.image, b.image), "with the multipliers at 0 the seed still changes the pixels"
    finally:
        for n, m in shipped.G.named_modules():
            if isinstance(m, AdaptiveNoise):
                m.weight.data.copy_(saved[n])


def test_sd_maps_are_drawn_from_the_fitted_masks():
    """Step 6 (no target_mask): each layer's SD map is a fitted mask of the drawn type, flipped and moved.
    Checked: drawing the source from all masks regardless of type fails the type assertion."""
    gen = tiny()
    out = gen.generate(make_toy_batch(6, 64), seed=0)
    for s in out.samples:
        rec = s["layers"][0]
        assert gen.types[int(gen.bank_types[rec["source"]])] == rec["defect_type"]
        region = gen.render(rec)
        assert int(region.sum()) == int(gen.bank[rec["source"]].sum()), "moving the SD map lost defect pixels"
    asked = gen.generate(make_toy_batch(6, 64).with_conditions(defect_type=["hole"] * 6), seed=0)
    assert all(s["layers"][0]["defect_type"] == "hole" for s in asked.samples)
    with pytest.raises(ConditionError, match="conditions.defect_type"):
        gen.generate(make_toy_batch(2, 64).with_conditions(defect_type=["crack", "hole"]), seed=0)


# -- step 2: layer-wise composition ------------------------------------------------------------------------------------
def test_composition_keeps_the_input_where_alpha_is_zero():
    """Step 2 (y = A·F + (1 − A)·x). With the alpha head driven to 0 the output is the input bit for bit
    (and nothing is masked); driven to 1 it is the foreground layer. Checked: returning F instead of the
    composition fails the first assertion."""
    gen = tiny()
    batch = make_toy_batch(3, 64)
    bias = gen.G.alpha.bias.data.clone()
    try:
        gen.G.alpha.bias.data.fill_(-60.0)
        out = gen.generate(batch, seed=0)
        assert torch.equal(out.image, batch.image), "pixels with A = 0 were changed"
        assert out.label == ["good"] * 3 and not bool(out.mask.any())
        gen.G.alpha.bias.data.fill_(60.0)
        out = gen.generate(make_toy_batch(3, 32), seed=0)  # the working size: no resizing in between
        recs = [s["layers"][0] for s in out.samples]
        region = torch.stack([gen.render(r) for r in recs])
        classes = torch.tensor([1 + gen.types.index(r["defect_type"]) for r in recs])
        import anoplug.seeding as S

        rngs = S.rngs_for([m["seed"] for m in out.meta])
        gen.sample(make_toy_batch(3, 32), rngs)  # the noise follows the records' draws
        noise = [torch.stack(z) for z in zip(*[[torch.randn(*s, generator=g) for s in gen.G.noise_shapes(32, 32)]
                                                for g in rngs])]
        fg, _ = gen._layer(make_toy_batch(3, 32).image, classes, region, noise)
        assert torch.allclose(out.image, fg.clamp(0, 1), atol=1e-6), "with A = 1 the output is not the foreground"
    finally:
        gen.G.alpha.bias.data.copy_(bias)


def test_two_layers_stack_two_defects(shipped, fabric):
    """Step 2 (layer-wise composition, ``layers=2``): layer 2 is G on layer 1's output, composed over it,
    so two SD maps in two corners give defects in both. Checked: composing only the last layer over
    the input fails the by-hand reproduction."""
    gen = DG.DefectGAN.from_pretrained("fabric")
    gen.params.layers = 2
    batch = fabric[[0, 1]]
    first = gen.generate(batch, seeds=[0, 1])
    edited = [dict(s) for s in first.samples]
    for s in edited:
        a, b = (dict(r) for r in s["layers"])
        a.update(defect_type="hole", source=int((gen.bank_types == gen.types.index("hole")).nonzero()[0]), top=4, left=4)
        b.update(defect_type="stain", source=int((gen.bank_types == gen.types.index("stain")).nonzero()[0]), top=40,
                 left=40)
        s["layers"] = [a, b]
    out = gen.generate(batch, seeds=[0, 1], samples=edited)
    for i in range(2):
        m = out.mask[i, 0]
        assert float(m[:32, :32].sum()) > 5 and float(m[32:, 32:].sum()) > 5, f"sample {i}: not two defects"
        assert out.label[i] == "hole+stain"
    # by hand: layer 2 is G applied to layer 1's output and composed over it (same draws, same noise order)
    from anoplug.seeding import rngs_for

    rngs = rngs_for([0, 1])
    gen.sample(batch, rngs)
    noise = [[[torch.randn(*s, generator=g) for s in gen.G.noise_shapes(64, 64)] for _ in range(2)] for g in rngs]
    y = batch.image
    for layer in range(2):
        recs = [s["layers"][layer] for s in edited]
        region = torch.stack([gen.render(r) for r in recs])
        classes = torch.tensor([1 + gen.types.index(r["defect_type"]) for r in recs])
        maps = [torch.stack([noise[i][layer][k] for i in range(2)]) for k in range(len(noise[0][0]))]
        fg, alpha = gen._layer(y, classes, region, maps)
        y = DG.compose(y, fg, alpha).clamp(0, 1)
    assert torch.allclose(out.image, y, atol=1e-5), "layer 2 is not composed over layer 1"


def test_mask_is_alpha_and_changed_pixels():
    """Mask = (A > 0.5) ∧ (|Δ| > tol). With A ≈ 1 everywhere, exactly the pixels that moved more than tol
    are masked. Checked: dropping the |Δ| condition fails (unchanged pixels get masked)."""
    gen = tiny(mask_tol=0.05)
    batch = make_toy_batch(2, 64)
    bias = gen.G.alpha.bias.data.clone()
    try:
        gen.G.alpha.bias.data.fill_(60.0)
        out = gen.generate(batch, seed=0)
        delta = (out.image - batch.image).abs().amax(1, keepdim=True)
        assert torch.equal(out.mask, (delta > 0.05).float())
        assert 0 < float(out.mask.mean()) < 1
    finally:
        gen.G.alpha.bias.data.copy_(bias)


# -- step 3: the critic set-up ------------------------------------------------------------------------------------------
def test_spectral_norm_on_generator_and_critic():
    """Step 3 (spectral norm on G and D): every conv is parametrised and its largest singular value is 1.
    Checked: building without ``apply_spectral_norm`` fails; ``spectral_norm=False`` turns it off."""
    gen = tiny(steps=1)
    for net in (gen.G, gen.D):
        convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
    conv = gen.G.trunk[0].body[0]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert math.isclose(float(sigma), 1.0, rel_tol=0.05), f"σ = {float(sigma)}"
    plain = tiny(steps=1, spectral_norm=False)
    assert not any(parametrize.is_parametrized(m, "weight") for m in plain.G.modules() if isinstance(m, torch.nn.Conv2d))


def test_history_has_gp_and_every_loss_term():
    """Steps 3-4: the critic's WGAN-GP penalty and class term, and every G term, are logged each step.
    Checked: ``gp_weight=0`` removes d/gp (asserted), as does building GANStep with another loss."""
    gen = tiny(steps=2)
    for row in gen.history:
        assert row["d/gp"] > 0 and math.isfinite(row["d/adv"]) and row["d/cls"] > 0
        for k in ("adv", "cls", "rec", "cycle", "cycle_mask", "vanishing", "spatial"):
            assert math.isfinite(row[f"g/{k}"]), k
    assert "d/gp" not in tiny(steps=1, gp_weight=0).history[0]


# -- step 4: the loss terms ------------------------------------------------------------------------------------------------
def _terms(gen: DG.DefectGAN, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    ctx = StepContext(0, 0, g, None)
    batch = gen._training_batch(ctx)
    fake = gen.gan.generate(batch)
    return batch, fake, gen.gan.g_terms(ctx, batch, fake)


def test_cycle_term_is_restoration_of_defacement():
    """Step 4 (cycle reconstruction, weight 10): the "cycle" term is 10·‖cycled − real‖₁ where the
    normals are defaced then restored and the real defects restored then defaced back, each pass a
    G call composed over its input. Checked: removing the restoration pass (or the term) fails."""
    gen = tiny(steps=1)
    batch, fake, terms = _terms(gen)
    e = batch.extra
    n1, n2, n3, n4 = e["noise"]
    f, a = gen.G(e["normals"], e["sd_deface"], n1)
    y = DG.compose(e["normals"], f, a)
    f, a = gen.G(y, e["sd_restore"], n2)
    back_normals = DG.compose(y, f, a)
    f, a = gen.G(e["defects"], e["sd_restore_real"], n3)
    z = DG.compose(e["defects"], f, a)
    f, a = gen.G(z, e["sd_real"], n4)
    back_defects = DG.compose(z, f, a)
    want = 10.0 * (torch.cat([back_normals, back_defects]) - batch.real).abs().mean()
    assert torch.allclose(terms["cycle"], want, atol=1e-6)
    assert float(terms["cycle"].detach()) > 0
    # defacement asks for the drawn type in its SD region, restoration for "normal" in the same region
    assert torch.equal(e["sd_deface"][:, 1:].sum(1, keepdim=True), e["region"])
    assert torch.equal(e["sd_restore"][:, :1], e["region"]) and not bool(e["sd_restore"][:, 1:].any())
    assert torch.equal(e["sd_restore_real"][:, :1], e["real_region"])


def test_sd_map_cycle_and_reconstruction_terms():
    """Step 4 (SD-map cycle ‖A_def − A_res‖₁ ·10 and SD-map reconstruction ‖½(A_def + A_res) − M‖₁ ·3).
    Checked: pairing the wrong alpha maps fails the equalities."""
    gen = tiny(steps=1)
    batch, fake, terms = _terms(gen)
    a1, a2, a3, a4 = fake["alpha"]
    m, md = batch.extra["region"], batch.extra["real_region"]
    assert torch.allclose(terms["cycle_mask"], 10 * 0.5 * ((a1 - a2).abs().mean() + (a3 - a4).abs().mean()))
    assert torch.allclose(terms["rec"], 3 * 0.5 * ((0.5 * (a1 + a2) - m).abs().mean() + (0.5 * (a3 + a4) - md).abs().mean()))


def test_vanishing_and_spatial_terms_have_the_stated_signs():
    """Step 4: vanishing = −log(mean A inside M) falls as A rises inside M and ignores A outside;
    spatial = mean(A) rises with A anywhere, so together they give A → 1 in M and A → 0 outside.
    Checked: the unofficial whole-image −log(mean A) fails the "ignores outside" assertion."""
    m = square(16, 4, 4, 4)
    low, high = torch.full_like(m, 0.2), torch.full_like(m, 0.2)
    high[m.bool()] = 0.9
    assert float(DG.vanishing_loss(high, m)) < float(DG.vanishing_loss(low, m))
    outside = low.clone()
    outside[~m.bool()] = 0.9
    assert math.isclose(float(DG.vanishing_loss(outside, m)), float(DG.vanishing_loss(low, m)), rel_tol=1e-6)
    assert float(DG.spatial_loss(outside)) > float(DG.spatial_loss(low))
    a = torch.full_like(m, 0.3).requires_grad_(True)
    (3 * DG.vanishing_loss(a, m) + 5 * DG.spatial_loss(a)).backward()
    assert bool((a.grad[m.bool()] < 0).all()) and bool((a.grad[~m.bool()] > 0).all())


# -- the shipped checkpoint -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 256])
def test_shipped_checkpoint_generates_on_toy_fabric(shipped, size):
    """The shipped "fabric" checkpoint at its own size and composed onto 256 px inputs."""
    batch = open_dataset("toy:fabric", split="train", size=size).batch([0, 1, 2])
    out = shipped.generate(batch, seed=0)
    assert out.image.shape == batch.image.shape and out.mask.shape == (3, 1, size, size)
    assert bool(((out.mask == 0) | (out.mask == 1)).all())
    assert sum(lab != "good" for lab in out.label) >= 2
    assert all(lab == "good" or lab in shipped.types for lab in out.label)
    assert float(out.mask.mean()) < 0.2, "masks cover most of the image"
