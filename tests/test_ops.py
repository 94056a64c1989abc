"""Shared operations: the HSV adjustment CutPaste's jitter and DRAEM's augmenter both use, and ``as_batch``."""

from __future__ import annotations

import pytest
import torch

from anoplug.ops import as_batch, hsv_adjust


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


def test_as_batch_accepts_what_users_have(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from anoplug.data.toy import ToyDataset
    from anoplug.types import Batch

    ds = ToyDataset("metal", "train", size=32, length=5)
    whole = as_batch(ds, "normals")
    assert len(whole) == 5 and as_batch(whole) is whole
    assert len(as_batch(ds, n=3)) == 3
    toy = as_batch("toy:fabric", n=2, size=32)
    assert len(toy) == 2 and toy.size == (32, 32)
    assert len(as_batch(None, n=2, size=32, default="toy:fabric")) == 2
    arr = (np.random.default_rng(0).random((2, 16, 16, 3)) * 255).astype(np.uint8)
    assert as_batch(arr).image.shape == (2, 3, 16, 16)
    assert as_batch(list(arr)).image.shape == (2, 3, 16, 16)
    pil = [Image.fromarray(a) for a in arr]
    assert as_batch(pil).image.shape == (2, 3, 16, 16)
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for im, path in zip(pil, paths):
        im.save(path)
    assert as_batch(paths).image.shape == (2, 3, 16, 16) and len(as_batch(str(paths[0]))) == 1
    t = torch.rand(3, 16, 16)
    assert isinstance(as_batch(t), Batch) and as_batch(t).image.shape == (1, 3, 16, 16)
    with pytest.raises(TypeError, match="^normals: cannot make an anoplug.Batch from NoneType"):
        as_batch(None, "normals")
    with pytest.raises(TypeError, match="^test: .*from int"):
        as_batch(3, "test")


def test_anomalous_subset_and_write_anomalies_leave_the_input_and_the_normals_untouched() -> None:
    from anoplug.ops import anomalous_subset, write_anomalies
    from anoplug.testing import make_toy_batch
    from anoplug.types import GOOD

    batch = make_toy_batch(3, 16)
    before = batch.image.clone()
    out, idx = anomalous_subset(batch, [{"anomalous": True}, {"anomalous": False}, {"anomalous": True}])
    assert idx == [0, 2]
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 2:5, 2:5] = 1  # sample 2's mask comes out empty: it stays good
    write_anomalies(out, idx, torch.zeros(2, 3, 16, 16), mask, "blob")
    assert torch.equal(batch.image, before)  # the input is never written
    assert out.label == ["blob", GOOD, GOOD]
    assert torch.equal(out.image[1], before[1]) and out.image[0].abs().sum() == 0
    everyone, idx = anomalous_subset(batch, [{"anomalous": True}] * 3)
    everyone.label[0] = "x"
    assert batch.label[0] != "x"  # fresh containers when every sample changes
