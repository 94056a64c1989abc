"""SeaS: the learned-method kit on the tiny base, plus one test per paper step (each says what removal it catches)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

from anoplug_seas import maps as M  # noqa: E402
from anoplug_seas import rmp as R  # noqa: E402
from anoplug_seas import seas as S  # noqa: E402

from anoplug.diffusion.attention import AttentionState  # noqa: E402
from anoplug.testing import LearnedGeneratorConformance, make_toy_anomalies, make_toy_batch  # noqa: E402
from anoplug.types import Batch  # noqa: E402

#: the tiny base with a very small RMP and few sampling steps (the shipped preset's layout)
FAST = {"base_model": "tiny-base", "da_down_blocks": (0, 1), "rmp_low_channels": 8, "rmp_mid_channels": 8,
        "rmp_layers": 1, "rmp_heads": 2, "rmp_groups": 4, "steps": 4, "guidance": 2.0, "num_normal": 4,
        "grad_accumulation": 1, "unet_lr": 1e-3, "token_lr": 1e-2, "rmp_lr": 1e-2}


def two_types(n: int = 6) -> Batch:
    """Toy defects of two types (dark rectangles): "scratch" then "hole"."""
    a = make_toy_anomalies(n, 64)
    a.label = ["scratch"] * (n // 2) + ["hole"] * (n - n // 2)
    return a


def normals() -> Batch:
    return make_toy_batch(4, 64, seed=10)


@pytest.fixture(scope="module")
def fitted() -> S.SeaS:
    return S.SeaS(**FAST).fit(normals(), two_types(), steps=3)


class TestSeaSConformance(LearnedGeneratorConformance):
    generator_name = "seas"
    generator_class = S.SeaS
    params = FAST
    bad_params = {"steps": 0, "mask_threshold": 1.5, "optimizer": "sgd", "da_normal_region": "half"}
    entry_module = "anoplug_seas.plugin"

    def fit_data(self):
        return normals(), two_types()


# -- 1. UA prompt ------------------------------------------------------------------------------------------------
def test_ua_prompt_adds_one_plus_four_k_tokens_at_the_official_columns(fitted):
    """Catches: a prompt or token count other than 1 + 4·K, or token columns other than the official 2 and 4–7."""
    tok = fitted.parts.tokenizer
    assert S.ua_prompt(1) == "a ob1 with sks5 sks6 sks7 sks8"
    assert S.placeholder_tokens(2) == ["ob1"] + [f"sks{i}" for i in range(1, 9)]
    assert all(t in tok.get_vocab() for t in S.placeholder_tokens(2))
    assert S.token_columns(tok) == ([2], [4, 5, 6, 7])


def test_new_tokens_start_at_object_and_defect():
    """Catches: placeholder rows not initialised from "object" (ob1) and "defect" (sks)."""
    g = S.SeaS(**FAST)
    g._build_model(["scratch", "hole"])
    tok, table = g.parts.tokenizer, g.token_table.weight
    obj, dfc = (tok(w, add_special_tokens=False).input_ids[0] for w in ("object", "defect"))
    assert torch.equal(table[tok.convert_tokens_to_ids("ob1")], table[obj])
    for t in S.placeholder_tokens(2)[1:]:
        assert torch.equal(table[tok.convert_tokens_to_ids(t)], table[dfc])


# -- 2. separation and sharing fine-tune ---------------------------------------------------------------------------
def test_full_unet_and_whole_token_table_train_at_their_own_rates(fitted):
    """Catches: a frozen (or partly frozen) UNet; training only the new token rows (diffusers-TI style) instead of
    the whole table; one learning rate for both."""
    base = S.SeaS(**FAST)
    base._build_model(fitted.types)
    before = dict(base.parts.unet.named_parameters())
    changed = [n for n, p in fitted.parts.unet.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before), "some UNet parameters did not train"
    tok = fitted.parts.tokenizer
    rows = tok.convert_tokens_to_ids(S.placeholder_tokens(2))
    other = tok("screw", add_special_tokens=False).input_ids[0]  # never in any SeaS prompt
    old, new = base.token_table.weight, fitted.token_table.weight
    assert not torch.equal(old[rows], new[rows]), "the UA token rows did not change"
    assert not torch.equal(old[other], new[other]), "rows outside the prompts are frozen: not the whole table"
    opts = fitted.optimizers()
    assert opts["unet"].param_groups[0]["lr"] == FAST["unet_lr"] and opts["tokens"].param_groups[0]["lr"] == FAST["token_lr"]
    assert [p.shape for p in opts["tokens"].param_groups[0]["params"]] == [old.shape]


def test_optimizer_falls_back_to_adamw_on_cpu():
    """Catches: a hard bitsandbytes dependency (8-bit Adam needs CUDA)."""
    cls, name = S.choose_optimizer("adamw8bit", torch.device("cpu"))
    assert cls is torch.optim.AdamW and name == "torch.optim.AdamW"


# -- 3. DA loss ----------------------------------------------------------------------------------------------------
def test_pixel_softmax_maps_sum_to_one_over_pixels_and_leave_the_output_alone(fitted):
    """Catches: maps softmaxed over tokens (the UNet's own attention) instead of pixels; a capture that changes
    the UNet's output."""
    unet = fitted.parts.unet
    layers = M.down_block_layers(unet, (0, 1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    cond = fitted.parts.encode_text([S.ua_prompt(0), S.ua_prompt(1)])
    with torch.no_grad():
        plain = unet(x, torch.tensor([500, 500]), encoder_hidden_states=cond).sample
        with M.capture_pixel_maps(unet, [n for v in layers.values() for n in v]) as state:
            captured = unet(x, torch.tensor([500, 500]), encoder_hidden_states=cond).sample
    assert torch.equal(plain, captured)
    for names in layers.values():
        m = M.block_map(state, names)  # [B, pixels, tokens]
        assert torch.allclose(m.sum(1), torch.ones(m.shape[0], m.shape[2]), atol=1e-4)
        assert not torch.allclose(m.sum(2), torch.ones(m.shape[:2]), atol=1e-2)


def test_da_uses_only_the_first_down_blocks_cross_attention():
    """Catches: DA maps taken from up or mid blocks (or self-attention) as well."""
    g = S.SeaS(**FAST)
    g._build_model(["a", "b"])
    layers = M.down_block_layers(g.parts.unet, (0, 1))
    names = [n for v in layers.values() for n in v]
    assert names and all(n.startswith(("down_blocks.0.", "down_blocks.1.")) and n.endswith("attn2.processor")
                         for n in names)
    with pytest.raises(ValueError, match="down blocks"):
        M.down_block_layers(g.parts.unet, (5,))


def test_da_targets_match_map_shapes_and_max_pool():
    """Catches: targets of the wrong size, or down-sampled by averaging (a 1-pixel defect must survive as 1)."""
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 8:12, 8:12] = 1  # one latent cell (16 px → 4 px per cell)
    t = M.da_targets(mask, 16, [16, 8])
    assert t[16].shape == (2, 1, 16, 16) and t[8].shape == (2, 1, 8, 8)
    assert float(t[8][0].max()) == 1.0 and float(t[8][1].max()) == 0.0
    assert torch.equal(t[8], torch.nn.functional.max_pool2d(t[16], 2))


def test_minmax_is_over_the_whole_batch():
    """Catches: per-sample min-max (a weakly attending sample would then reach 1 too)."""
    maps = torch.zeros(2, 4, 8)
    maps[0, :, 2] = torch.tensor([0.0, 0.2, 0.4, 1.0])
    maps[1, :, 2] = torch.tensor([0.0, 0.1, 0.2, 0.3])
    normal, _ = M.normalised_token_maps(maps, [2], [4, 5], (2, 2))
    assert float(normal[0].max()) == 1.0 and math.isclose(float(normal[1].max()), 0.3, rel_tol=1e-6)


def test_normal_token_term_counts_only_inside_the_mask():
    """Catches: the normal-token term taken over the whole image (or dropped)."""
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1:3, 1:3] = 1
    anomaly = target.clone()
    outside = torch.zeros(1, 1, 4, 4)
    outside[..., 0, 0] = 1
    inside = torch.zeros(1, 1, 4, 4)
    inside[..., 1, 1] = 1
    assert float(M.da_loss(outside, anomaly, target)) == 0.0
    assert math.isclose(float(M.da_loss(inside, anomaly, target)), 0.25)  # mean of (1, 0, 0, 0)²


# -- 4. NA loss and the total ----------------------------------------------------------------------------------
def test_finetune_loss_is_eps_plus_da_at_two_resolutions_plus_na(fitted):
    """Catches: a dropped term of the total (ε anomalies + DA(r1) + DA(r2) + ε normals)."""
    rows = [h for h in fitted.history if h["phase"] == "finetune"]
    assert rows and {"da_loss_16", "da_loss_8", "na_loss"} <= set(rows[0])
    for h in rows:
        assert math.isclose(h["loss"], h["eps_loss"] + h["da_loss_16"] + h["da_loss_8"] + h["na_loss"], rel_tol=1e-5)
    no_na = S.SeaS(**{**FAST, "na_loss": False}).fit(normals(), two_types(), steps=1)
    assert "na_loss" not in no_na.history[0]


# -- 5. RMP ----------------------------------------------------------------------------------------------------
def test_rmp_reads_latent_half_and_latent_unet_features_and_each_vae_scale(fitted):
    """Catches: RMP fed by the wrong UNet or VAE-decoder blocks (tiny base: up blocks 0, 1 → 8², 16²;
    decoder up blocks 0, 1 → 32², 64²)."""
    plan = fitted.plan
    assert plan.unet_modules == ("up_blocks.0", "up_blocks.1") and plan.unet_channels == (128, 64)
    assert plan.vae_blocks == (0, 1) and plan.latent_size == 16 and plan.image_size == 64
    assert len(fitted.rmp.mrms) == 2


def test_rmp_training_routes_normals_through_the_coarse_map_only(fitted):
    """Catches: normal images sent through the MRMs (the official code upsamples their coarse map instead), or
    VAE features ignored for anomalies."""
    rmp = fitted.rmp.eval()
    g = torch.Generator().manual_seed(1)
    unet_f = [torch.randn(2, 128, 8, 8, generator=g), torch.randn(2, 64, 16, 16, generator=g)]
    vae_a = [torch.randn(1, 32, 32, 32, generator=g), torch.randn(1, 32, 64, 64, generator=g)]
    vae_b = [v + 1 for v in vae_a]
    with torch.no_grad():
        fa, ca = rmp.forward_train(unet_f, vae_a, 1)
        fb, cb = rmp.forward_train(unet_f, vae_b, 1)
    assert fa.shape == (2, 2, 64, 64) and ca.shape == (2, 2, 16, 16)
    assert torch.equal(fa[1], fb[1]) and not torch.equal(fa[0], fb[0])


def test_focal_loss_is_gamma_two_on_probabilities():
    """Catches: plain cross-entropy (no (1 − p)^γ factor) or a γ other than 2."""
    probs = torch.tensor([0.1, 0.9]).view(1, 2, 1, 1)
    target = torch.ones(1, 1, 1, 1)
    pt = (1 - 1e-5) * 0.9 + 1e-5 * 0.1 + 1e-5
    assert math.isclose(float(R.focal_loss(probs, target)), -(1 - pt) ** 2 * math.log(pt), rel_tol=1e-5)
    assert float(R.focal_loss(probs, torch.full_like(target, 0.99))) > float(R.focal_loss(probs, target))  # 0.99 → 0


# -- 6. generation ------------------------------------------------------------------------------------------------
def test_start_latent_is_unscaled_and_noised_to_step_1500(fitted):
    """Catches: a T = 1000 start, or a start latent multiplied by the scaling factor."""
    z, e = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    assert math.isclose(float(S.more_noise(z, e, 1500)[0, 0, 0, 0]), 0.0178, abs_tol=3e-4)
    img = make_toy_batch(1, 64).image
    a = fitted.start_latent(img, [torch.Generator().manual_seed(3)])
    scaled = S.SeaS(**{**FAST, "scale_start_latent": True})
    scaled.parts, scaled.types = fitted.parts, fitted.types
    b = scaled.start_latent(img, [torch.Generator().manual_seed(3)])
    with torch.no_grad():
        dist = fitted.parts.vae.encode(img * 2 - 1).latent_dist
    g = torch.Generator().manual_seed(3)
    z = dist.mean + dist.std * torch.randn(a.shape[1:], generator=g)[None]  # the posterior sample's draw first
    n = torch.randn(a.shape[1:], generator=g)[None]
    assert torch.allclose(a, S.more_noise(z, n, 1500), atol=1e-5)
    assert torch.allclose(b, S.more_noise(z * fitted.parts.scaling_factor, n, 1500), atol=1e-5)
    assert not torch.allclose(a, S.more_noise(z, n, 1000), atol=1e-3)


def test_mask_is_the_mean_of_the_last_three_steps(fitted):
    """Catches: a mask from one step only, or from other steps than the last 3."""
    calls = iter(range(100))

    class Const(torch.nn.Module):
        def forward(self, u, v):  # probability of class 1 = the call index
            k = float(next(calls))
            return torch.stack([torch.full((1, 4, 4), 1 - k), torch.full((1, 4, 4), k)], 1)

    hook = S.MaskHead(Const(), fitted.parts, fitted.plan, last=3)
    hook.features = []

    class Ctx:
        num_steps = 5
        i = 0

    x = torch.zeros(1, 4, 16, 16)
    for i in range(5):
        Ctx.i = i
        hook.on_prediction(Ctx, x, x)
    assert len(hook.probs) == 3 and float(hook.probability().mean()) == 1.0  # mean of 0, 1, 2


def test_generation_gives_binary_masks_of_the_image_shape(fitted):
    """Catches: a soft or wrongly sized mask, or a label that disagrees with it."""
    batch = make_toy_batch(2, 48, seed=4)  # not the native 64 px: the mask must follow the batch
    out = fitted.generate(batch, seed=0)
    assert out.mask.shape == (2, 1, 48, 48) and out.image.shape == (2, 3, 48, 48)
    assert bool(((out.mask == 0) | (out.mask == 1)).all())
    for i in range(2):
        assert (out.label[i] != "good") == bool(out.mask[i].any())


def test_normal_prompt_path_generates_normal_images(fitted):
    """Catches: a normal path that still uses the UA prompt (or still emits masks)."""
    batch = make_toy_batch(2, 64, seed=4)
    anomalous = fitted.generate(batch, seed=0)
    normal_gen = S.SeaS(**{**FAST, "generate_normals": True})
    normal_gen.parts, normal_gen.types, normal_gen.rmp, normal_gen.plan = (fitted.parts, fitted.types, fitted.rmp,
                                                                          fitted.plan)
    normal_gen._fitted = True
    out = normal_gen.generate(batch, seed=0)
    assert out.label == ["good", "good"] and float(out.mask.sum()) == 0.0
    assert not torch.equal(out.image, anomalous.image)


def test_defect_type_condition_chooses_the_prompt(fitted):
    """Catches: conditions.defect_type ignored, or an unfitted type accepted."""
    from anoplug.conditions import ConditionError

    batch = make_toy_batch(1, 64, seed=4)
    a = fitted.generate(batch.with_conditions(defect_type=["scratch"]), seed=0)
    b = fitted.generate(batch.with_conditions(defect_type=["hole"]), seed=0)
    assert a.meta[0]["sample"]["defect_type"] == "scratch" and b.meta[0]["sample"]["defect_type"] == "hole"
    assert not torch.equal(a.image, b.image)
    with pytest.raises(ConditionError, match="defect_type"):
        fitted.generate(batch.with_conditions(defect_type=["crack"]), seed=0)


def test_pixel_capture_state_is_the_toolkits():
    """Catches: a private map store instead of the toolkit's AttentionState."""
    assert isinstance(M.PixelSoftmaxCapture("x", None, AttentionState()).state, AttentionState)
