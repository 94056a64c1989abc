"""The Batch contract: validation and lossless conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anoplug.types import Batch, BatchError, load_image


def _arr(n=2, h=8, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_numpy_roundtrip_is_lossless():
    a = _arr()
    m = (np.random.default_rng(1).random((2, 8, 10)) > 0.5).astype(np.uint8) * 255
    b = Batch.from_numpy(a, m)
    assert b.image.shape == (2, 3, 8, 10) and b.image.dtype == torch.float32
    img, mask = b.to_numpy()
    assert np.array_equal(img, a) and np.array_equal(mask, m)


def test_pil_and_path_roundtrip(tmp_path):
    a = _arr(1)[0]
    Image.fromarray(a).save(tmp_path / "x.png")
    b = Batch.from_paths([tmp_path / "x.png"])
    assert np.array_equal(b.to_numpy()[0][0], a)
    assert np.array_equal(np.asarray(b.to_pil()[0]), a)
    assert np.array_equal(Batch.from_pil(Image.fromarray(a)).to_numpy()[0][0], a)
    assert b.meta[0]["source"].endswith("x.png")


@pytest.mark.parametrize("bad, match", [
    (dict(image=torch.rand(2, 1, 4, 4)), r"\[B,3,H,W\]"),
    (dict(image=torch.rand(2, 3, 4, 4).double()), "float32"),
    (dict(image=torch.rand(2, 3, 4, 4) + 1), r"\[0,1\]"),
    (dict(image=torch.rand(2, 3, 4, 4), mask=torch.rand(2, 1, 4, 4)), "binary"),
    (dict(image=torch.rand(2, 3, 4, 4), mask=torch.zeros(2, 1, 4, 5)), "mask must be"),
    (dict(image=torch.rand(2, 3, 4, 4), label=["good"]), "label has 1"),
])
def test_contract_violations_name_the_field(bad, match):
    with pytest.raises(BatchError, match=match):
        Batch(**bad)


@pytest.mark.parametrize("value", [0.5, 1e-30, 1.0 - 2.0**-24, 2.0, -1.0, float("nan"), float("inf")])
def test_mask_with_one_non_binary_value_is_refused(value):
    """The cheap binary test (range + Σ t(1−t) = 0) catches a single bad value, tiny or near 1."""
    m = torch.zeros(2, 1, 8, 8)
    m[0, 0, :2] = 1.0
    Batch(image=torch.rand(2, 3, 8, 8), mask=m.clone())  # binary: accepted
    m[1, 0, 5, 3] = value
    with pytest.raises(BatchError, match="mask must be binary"):
        Batch(image=torch.rand(2, 3, 8, 8), mask=m)


def test_indexing_cat_clone():
    b = Batch(image=torch.rand(4, 3, 4, 4), label=["good", "a", "b", "good"], text=list("wxyz"))
    sub = b[[1, 2]]
    assert sub.label == ["a", "b"] and sub.text == ["x", "y"] and torch.equal(sub.image, b.image[1:3])
    both = Batch.cat([b[0], b[3]])
    assert len(both) == 2 and both.text == ["w", "z"]
    c = b.clone()
    c.image[0] = 0
    assert not torch.equal(c.image, b.image)
    with pytest.raises(BatchError, match="text present"):
        Batch.cat([b[0], Batch(image=torch.rand(1, 3, 4, 4))])


def test_load_image_conversions_and_errors(tmp_path):
    Image.fromarray(np.full((4, 4), 7, np.uint8), "L").save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").shape == (4, 4, 3)
    Image.fromarray(np.full((4, 4, 4), 9, np.uint8), "RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").shape == (4, 4, 3)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "d.png")
    assert load_image(tmp_path / "d.png").max() == 255
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(BatchError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_cat_common_extras_for_mixtures():
    a = Batch(image=torch.rand(1, 3, 4, 4), extras={"soft_mask": torch.zeros(1, 1, 4, 4)})
    b = Batch(image=torch.rand(1, 3, 4, 4))
    with pytest.raises(BatchError, match="extras keys differ"):
        Batch.cat([a, b])
    assert Batch.cat([a, b], common_extras=True).extras == {}
    assert set(Batch.cat([a, a]).extras) == {"soft_mask"}
