"""DRAEM reference plugin: the conformance kit plus the mechanism's defining properties."""

from __future__ import annotations

import pytest
import torch
from anoplug_draem import augment
from anoplug_draem.draem import Draem

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


@pytest.mark.parametrize("name", augment.NAMES)
def test_each_augmenter_stays_in_range_and_changes_image(name: str) -> None:
    x = make_toy_batch(3, 32).image
    rngs = [torch.Generator().manual_seed(k) for k in range(3)]
    params = torch.tensor([augment.sample_params(name, r) for r in rngs]).reshape(3, -1)
    if name == "solarize":
        params[:, 0] = 1.0  # force active
    y = augment.FUNCS[name](x, params)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.allclose(y, x), f"{name} did nothing"


def test_equalize_matches_pil() -> None:
    import numpy as np
    from PIL import Image, ImageOps

    x = make_toy_batch(2, 32).image
    y = augment.equalize(x, torch.zeros(2, 0))
    for i in range(2):
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        ref = np.asarray(ImageOps.equalize(Image.fromarray(arr))).astype(np.float32) / 255
        assert np.abs(ref - y[i].permute(1, 2, 0).numpy()).max() < 1e-6


@pytest.mark.parametrize("cutoff", [0, 3, 20])
def test_autocontrast_matches_pil(cutoff: int) -> None:
    import numpy as np
    from PIL import Image, ImageOps

    x = make_toy_batch(1, 32).image * 0.5 + 0.2
    x = (x * 255).round() / 255
    y = augment.autocontrast(x, torch.full((1, 1), float(cutoff)))
    arr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ref = np.stack([np.asarray(ImageOps.autocontrast(Image.fromarray(arr[..., c]), cutoff=cutoff)) for c in range(3)], -1)
    assert np.array_equal((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), ref)


def test_sharpness_matches_pil() -> None:
    import numpy as np
    from PIL import Image, ImageEnhance

    x = make_toy_batch(1, 32).image
    for factor in (0.0, 0.5, 1.7):
        y = augment.sharpness(x, torch.tensor([[factor]]))
        arr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        ref = np.asarray(ImageEnhance.Sharpness(Image.fromarray(arr)).enhance(factor)).astype(np.int16)
        ours = (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
        assert np.abs(ours - ref).max() <= 1, factor  # PIL rounds in integer arithmetic
