"""One test per Anodapter step: each fails when that step is removed (the docstrings say which removal it catches)."""

from __future__ import annotations

import pytest
import torch
from anoplug_anodapter.core import (
    IMAGE_PROMPT,
    assign_type_tokens,
    binarise_mask_image,
    mask_prompt,
    mask_to_vae_input,
)
from anoplug_anodapter.method import Anodapter

from anoplug.testing import make_toy_anomalies, make_toy_batch
from anoplug.types import Batch

FAST = {"preset": "cpu", "steps": 2}


def anomalies(labels: list[str]) -> Batch:
    a = make_toy_anomalies(len(labels), 64)
    return Batch(image=a.image, mask=a.mask, label=list(labels), meta=a.meta)


@pytest.fixture(scope="module")
def fitted() -> Anodapter:
    normals = make_toy_batch(4, 64, seed=10)
    obj = torch.zeros(4, 1, 64, 64)
    obj[..., 8:56, 16:48] = 1
    normals.object_mask = obj
    return Anodapter(**FAST).fit(normals, anomalies(["scratch", "hole", "scratch", "hole"]), steps=2)


def rngs(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# -- step 1: type tokens ---------------------------------------------------------------------------
def test_type_tokens_follow_sorted_type_names_not_data_order() -> None:
    """Catches token assignment in order of appearance (the official os.listdir order) instead of sorted names."""
    a = assign_type_tokens(["stain", "hole", "crack", "hole"])
    b = assign_type_tokens(["crack", "stain", "hole"])
    assert a == b == {"crack": "vfx", "hole": "frt", "stain": "plk"}
    g1 = Anodapter(**FAST).fit(make_toy_batch(2, 64), anomalies(["scratch", "hole"]), steps=1)
    g2 = Anodapter(**FAST).fit(make_toy_batch(2, 64), anomalies(["hole", "scratch"]), steps=1)
    assert g1.type_tokens == g2.type_tokens == {"hole": "vfx", "scratch": "frt"}
    assert mask_prompt("vfx") == "a photo of sks with vfx" and mask_prompt(None) == "a photo of sks"


# -- step 2: the object mask -----------------------------------------------------------------------
def test_object_mask_is_the_first_normals_else_all_ones(fitted: Anodapter) -> None:
    """Catches ignoring the data's object_mask (or a missing fallback when there is none)."""
    assert fitted.class_object_mask.shape == (1, 1, 64, 64)
    assert float(fitted.class_object_mask.sum()) == 48 * 32
    normals = make_toy_batch(2, 64)
    normals.object_mask = None
    bare = Anodapter(**FAST).fit(normals, anomalies(["hole", "hole"]), steps=1)
    assert bool((bare.class_object_mask == 1).all())


# -- steps 3/5/6: the adapters' conditions change the output ---------------------------------------------
def test_each_adapters_condition_changes_its_stage(fitted: Anodapter) -> None:
    """Catches dropping either adapter's residuals from the UNet call (its hint would then change nothing)."""
    a, b = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    a[..., 8:24, 8:24] = 1
    b[..., 40:60, 30:60] = 1
    img_a, img_b = fitted.stage2_image(a, rngs(1)), fitted.stage2_image(b, rngs(1))
    assert float((img_a - img_b).abs().max()) > 1e-3
    assert torch.equal(fitted.stage2_image(a, rngs(1)), img_a)  # and nothing else differs between the runs
    m_a, _ = fitted.stage1_mask(["hole"], a, rngs(1))
    m_b, _ = fitted.stage1_mask(["hole"], b, rngs(1))
    assert float((m_a - m_b).abs().max()) > 1e-3


def test_stage1_prompt_carries_the_type_token(fitted: Anodapter) -> None:
    """Catches a stage-1 prompt without the type's token (defect_type would then not choose the mask)."""
    obj = torch.ones(1, 1, 64, 64)
    s, _ = fitted.stage1_mask(["scratch"], obj, rngs(1))
    h, _ = fitted.stage1_mask(["hole"], obj, rngs(1))
    assert float((s - h).abs().max()) > 1e-4


# -- step 5: the > 200 binarisation ------------------------------------------------------------------
def test_stage1_mask_is_binarised_strictly_above_200(fitted: Anodapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches another threshold (0.5 of [0,1] = 127.5, ≥ 200) or no binarisation of the generated mask image."""
    grey = torch.tensor([120.0, 150.0, 200.0, 201.0, 255.0]) / 255
    img = grey.view(1, 1, 1, 5).expand(1, 3, 1, 5).contiguous()
    assert binarise_mask_image(img).flatten().tolist() == [0, 0, 0, 1, 1]
    fake = torch.zeros(1, 3, 64, 64)
    fake[..., :32] = 200 / 255
    fake[..., 32:] = 201 / 255
    monkeypatch.setattr(fitted, "_denoise", lambda *a, **k: fake)
    image, mask = fitted.stage1_mask(["hole"], torch.ones(1, 1, 64, 64), rngs(1))
    assert torch.equal(image, fake)
    assert bool((mask[..., :32] == 0).all()) and bool((mask[..., 32:] == 1).all())


# -- step 6: stage 2 is conditioned on stage 1's mask -------------------------------------------------------
def test_stage2_reads_the_stage1_mask_and_returns_it(fitted: Anodapter) -> None:
    """Catches stage 2 conditioned on anything but the binarised stage-1 mask (object mask, zeros, the soft image)."""
    seen: list[torch.Tensor] = []
    hook = fitted.image_adapter.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        out = fitted.generate(make_toy_batch(2, 64), seed=0)
    finally:
        hook.remove()
    assert len(seen) == 1 and torch.equal(seen[0], out.mask)
    assert set(seen[0].unique().tolist()) <= {0.0, 1.0}


def test_target_mask_skips_stage1(fitted: Anodapter) -> None:
    """Catches ignoring conditions.target_mask (stage 2 must then read exactly that mask)."""
    b = make_toy_batch(2, 64)
    t = torch.zeros(2, 1, 64, 64)
    t[..., 10:30, 20:50] = 1
    seen: list[torch.Tensor] = []
    h1 = fitted.image_adapter.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    h2 = fitted.mask_adapter.register_forward_pre_hook(lambda mod, args: seen.append(torch.full((1,), -1.0)))
    try:
        out = fitted.generate(b.with_conditions(target_mask=t), seed=0)
    finally:
        h1.remove()
        h2.remove()
    assert len(seen) == 1 and torch.equal(seen[0], t) and torch.equal(out.mask, t)


# -- step 4: the joint loss -----------------------------------------------------------------------------
def test_joint_loss_sums_image_and_mask_terms_and_trains_both_adapters(fitted: Anodapter) -> None:
    """Catches dropping either term: each adapter gets gradient only through its own half's term."""
    normals = make_toy_batch(2, 64, seed=10)
    g = Anodapter(**FAST, num_normals=0)
    data = g.build(normals, anomalies(["hole", "scratch"]), torch.Generator().manual_seed(0))
    out = g.training_step(data, 0, torch.Generator().manual_seed(1))
    assert float(out["loss"].detach()) == pytest.approx(float(out["image_loss"] + out["mask_loss"]), rel=1e-5)
    out["loss"].backward()
    grad = {k: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)
            for k, m in g.modules().items()}
    assert all(v > 0 for v in grad.values()), grad
    g2 = Anodapter(**FAST, num_normals=0, mask_weight=0.0)
    data2 = g2.build(normals, anomalies(["hole", "scratch"]), torch.Generator().manual_seed(0))
    g2.training_step(data2, 0, torch.Generator().manual_seed(1))["loss"].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in g2.mask_adapter.parameters())


def test_mask_images_enter_the_vae_in_0_1_and_image_prompt_is_type_free() -> None:
    """Catches normalising mask images to [-1, 1] (the official dataset leaves them in [0, 1]) or a typed image prompt."""
    m = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert (mask_to_vae_input(m) * 2 - 1)[0, :, 0].tolist() == [[0.0, 1.0]] * 3
    assert IMAGE_PROMPT == "a photo of dqd"
