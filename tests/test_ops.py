"""Shared tensor operations: the HSV adjustment CutPaste's jitter and DRAEM's augmenter both use."""

from __future__ import annotations

import pytest
import torch

from anoplug.ops import hsv_adjust


@pytest.mark.parametrize("shift", [0.0, 0.07, -0.31, 0.5])
def test_hsv_hue_rotation_matches_torchvision_in_both_layouts(shift: float) -> None:
    from torchvision.transforms.v2 import functional as F

    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    x[0, :, :2] = 0.4  # grey pixels: hue undefined, must stay grey
    ref = torch.stack([F.adjust_hue(im, shift) for im in x])
    assert (hsv_adjust(x, shift, dim=1) - ref).abs().max() < 2e-5
    flat = x.permute(1, 0, 2, 3).reshape(3, -1).clone()  # [3, N], as CutPaste stores patch pixels
    hsv_adjust(flat, torch.full((flat.shape[1],), shift), dim=0, out=flat)  # in place
    assert (flat.reshape(3, 2, 12, 12).permute(1, 0, 2, 3) - ref).abs().max() < 2e-5


def test_hsv_saturation_shift_is_clamped_and_scale_free() -> None:
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    grey = hsv_adjust(x, 0.0, -1.0)  # saturation to 0: every channel becomes V = max
    assert torch.allclose(grey, x.amax(1, keepdim=True).expand_as(x))
    full = hsv_adjust(x, 0.0, 1.0)  # saturation to 1: the smallest channel becomes 0
    assert float(full.amin(1).abs().max()) < 1e-6
    on_255 = hsv_adjust(x * 255, 0.1, 0.2)  # the same on the 0-255 scale
    assert (on_255 / 255 - hsv_adjust(x, 0.1, 0.2)).abs().max() < 1e-5
