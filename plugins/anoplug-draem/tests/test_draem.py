"""DRAEM reference plugin: the conformance kit plus the mechanism's defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anoplug_draem.draem import Draem

from anoplug import augment
from anoplug.params import ParamError
from anoplug.testing import GeneratorConformance, make_toy_batch


class TestDraemConformance(GeneratorConformance):
    generator_name = "draem"
    params = {"probability": 1.0, "texture_source": "perlin"}
    bad_params = {"probability": 1.5, "beta_max": -0.1, "n_augmenters": 11}
    entry_module = "anoplug_draem.plugin"


class TestDraemSkimageTextures(GeneratorConformance):
    generator_class = Draem
    params = {"probability": 1.0}


def _draws(n: int) -> list[dict]:
    g = Draem(probability=0.5, texture_source="perlin")
    rngs = [torch.Generator().manual_seed(i) for i in range(n)]
    return g.sample(make_toy_batch(1, 8), rngs)


def test_sampling_law_matches_the_paper() -> None:
    s = _draws(2000)
    frac = sum(d["anomalous"] for d in s) / len(s)
    assert 0.46 < frac < 0.54, frac  # p = 0.5 ± 4σ
    scales = {sc for d in s for sc in d["scales"]}
    assert scales == {1, 2, 4, 8, 16, 32}
    betas = torch.tensor([d["beta"] for d in s])
    assert 0 <= betas.min() and betas.max() <= 0.8 and abs(float(betas.mean()) - 0.4) < 0.02
    angles = torch.tensor([d["angle"] for d in s])
    assert -90 <= angles.min() and angles.max() <= 90
    chains = [[a for a, _ in d["augmenters"]] for d in s]
    assert all(len(c) == 3 and len(set(c)) == 3 for c in chains)  # 3 without replacement


def test_blend_law_inside_mask() -> None:
    """With β = 0 the mask is filled with the (Perlin-as-texture) source alone."""
    b = make_toy_batch(2, 64)
    g = Draem(probability=1.0, texture_source="perlin", n_augmenters=0, beta_max=0.0)
    out = g.generate(b, seed=4)
    m = out.mask.bool().expand_as(out.image)
    inside = out.image[m]  # β = 0 → pure texture 0.5·noise + 0.25, and noise > 0.5 inside the mask
    assert out.mask.any() and float(inside.min()) > 0.5 and float(inside.max()) <= 0.5 * 1.0 + 0.25 + 1e-6


def test_empty_mask_is_normal() -> None:
    b = make_toy_batch(8, 32)
    g = Draem(probability=1.0, texture_source="perlin", threshold=1.0)  # noise never exceeds 1 → empty
    out = g.generate(b, seed=0)
    assert out.label == ["good"] * 8 and not out.mask.any()
    assert torch.equal(out.image, b.image)


def test_min_max_scale_validation_names_field() -> None:
    with pytest.raises(ParamError, match="min_scale_exp"):
        Draem(min_scale_exp=5, max_scale_exp=3)


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", augment.NAMES)
def test_each_augmenter_keeps_uint8_and_changes_image(name: str) -> None:
    x = _u8(make_toy_batch(3, 32).image)
    rngs = [torch.Generator().manual_seed(k) for k in range(3)]
    params = torch.tensor([augment.sample_params(name, r) for r in rngs]).reshape(3, -1)
    if name == "solarize":
        params[:, 0] = 1.0  # force active
    before = x.clone()
    y = augment.FUNCS[name](x, params)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.equal(x, before), f"{name} modified its input"
    assert not torch.equal(y, x), f"{name} did nothing"


def test_equalize_matches_pil() -> None:
    import numpy as np
    from PIL import Image, ImageOps

    x = _u8(make_toy_batch(2, 32).image)
    y = augment.FUNCS["equalize"](x, torch.zeros(2, 0))
    for i in range(2):
        ref = np.asarray(ImageOps.equalize(Image.fromarray(x[i].permute(1, 2, 0).numpy())))
        assert np.array_equal(ref, y[i].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("cutoff", [0, 3, 20])
def test_autocontrast_matches_pil(cutoff: int) -> None:
    import numpy as np
    from PIL import Image, ImageOps

    x = _u8(make_toy_batch(1, 32).image * 0.5 + 0.2)
    y = augment.FUNCS["autocontrast"](x, torch.full((1, 1), float(cutoff)))
    arr = x[0].permute(1, 2, 0).numpy()
    ref = np.stack([np.asarray(ImageOps.autocontrast(Image.fromarray(arr[..., c]), cutoff=cutoff)) for c in range(3)], -1)
    assert np.array_equal(y[0].permute(1, 2, 0).numpy(), ref)


def test_sharpness_matches_pil() -> None:
    import numpy as np
    from PIL import Image, ImageEnhance

    x = _u8(make_toy_batch(1, 32).image)
    arr = x[0].permute(1, 2, 0).numpy()
    for factor in (0.0, 0.5, 1.7):
        y = augment.sharpness(x, torch.tensor([[factor]]))
        ref = np.asarray(ImageEnhance.Sharpness(Image.fromarray(arr)).enhance(factor)).astype(np.int16)
        ours = y[0].permute(1, 2, 0).numpy().astype(np.int16)
        assert np.abs(ours - ref).max() <= 1, factor  # PIL rounds in integer arithmetic


def test_gamma_table_is_imgaugs() -> None:
    """imgaug (uint8): table = 255·linspace(0,1,256)^γ in float32, clipped and truncated."""
    import numpy as np

    g = np.float32(0.7)
    ref = np.clip(np.linspace(0, 1.0, 256, dtype=np.float32) ** g * 255, 0, 255).astype(np.uint8)
    t = augment.TABLES["gamma"](None, torch.tensor([[0.7, 0.7, 0.7]]))
    assert np.abs(t[0, 0].numpy().astype(int) - ref.astype(int)).max() <= 1  # float32 pow may differ by 1 ulp


def _hsv_reference(x: torch.Tensor, dh: float, ds: float) -> torch.Tensor:
    """The textbook where-chain HSV round trip, to check the compact version against."""
    f = x.float() / 255
    r, g, b = f.unbind(1)
    mx, mn = f.max(1).values, f.min(1).values
    d = mx - mn
    safe = torch.where(d > 0, d, torch.ones_like(d))
    h = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(d > 0, h / 6, torch.zeros_like(h))
    s = torch.where(mx > 0, d / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    h = (h + dh / 255) % 1
    s = (s + ds / 255).clamp(0, 1)
    k = (torch.tensor([5.0, 3.0, 1.0])[None, :, None, None] + h[:, None] * 6) % 6
    out = mx[:, None] - mx[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return (out * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize(("dh", "ds"), [(0, 0), (37, -20), (-50, 50)])
def test_hue_saturation_matches_textbook_hsv(dh: float, ds: float) -> None:
    x = _u8(make_toy_batch(2, 32).image)
    y = augment.hue_saturation(x, torch.tensor([[dh, ds]] * 2))
    assert (y.int() - _hsv_reference(x, dh, ds).int()).abs().max() <= 1
    if dh == ds == 0:
        assert (y.int() - x.int()).abs().max() <= 1


def test_composed_point_maps_equal_one_by_one() -> None:
    """A run of point maps looked up once through the composed table = applying them in turn."""
    x = _u8(make_toy_batch(1, 48).image)
    run = [("gamma", [0.6, 1.3, 1.9]), ("equalize", []), ("solarize", [1.0, 90.0]), ("autocontrast", [7.0]),
           ("posterize", [3.0]), ("invert", [])]
    step = x.clone()
    for name, params in run:
        step = augment.FUNCS[name](step, torch.tensor([params]).reshape(1, -1))
    chained = augment.apply_chains(x.clone(), [run])
    assert torch.equal(chained, step)


def test_brightness_draws_imgaugs_colour_space_and_order_per_sample():
    """Review fix: imgaug's MultiplyAndAddToBrightness draws one of six colour spaces and the order of
    multiply/add per image; the old code always used YCrCb luma, multiply first."""
    import cv2

    from anoplug import augment

    draws = [augment.sample_params("brightness", torch.Generator().manual_seed(i)) for i in range(200)]
    assert {int(d[2]) for d in draws} == set(range(6)) and {d[3] for d in draws} == {0.0, 1.0}
    assert [n for n, _ in augment.BRIGHTNESS_SPACES] == ["YCrCb", "HSV", "HLS", "Lab", "Luv", "YUV"]
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    outs = [augment.brightness(x, torch.tensor([[1.15, 12.0, float(k), 0.0]])) for k in range(6)]
    assert len({o.numpy().tobytes() for o in outs}) == 6  # each colour space changes the image its own way
    hsv_in = cv2.cvtColor(x[0].permute(1, 2, 0).numpy().copy(), cv2.COLOR_RGB2HSV)
    hsv_out = cv2.cvtColor(outs[1][0].permute(1, 2, 0).numpy().copy(), cv2.COLOR_RGB2HSV)
    v = hsv_in[..., 2].astype(int)
    expect_v = np.clip(np.clip(np.round(v * 1.15), 0, 255) + 12, 0, 255)  # V multiplied, then 12 added
    assert np.abs(hsv_out[..., 2].astype(int) - expect_v).max() <= 1  # up to the 8-bit round trip
    mul_first = augment.brightness(x, torch.tensor([[1.2, 25.0, 0.0, 0.0]]))
    add_first = augment.brightness(x, torch.tensor([[1.2, 25.0, 0.0, 1.0]]))
    assert not torch.equal(mul_first, add_first)  # the drawn order matters: (y·m)+a ≠ (y+a)·m
