"""Texture sources: scikit-image's bundled pictures (offline) and a user DTD folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anoplug.data import DataError
from anoplug.data.textures import SKIMAGE_TEXTURES, texture_source
from anoplug.testing import block_network


def test_skimage_textures_load_offline():
    with block_network():
        src = texture_source("skimage", size=32)
        assert len(src) == len(SKIMAGE_TEXTURES) * 4
        tex = src.stack(range(len(src)))
    assert tex.shape == (len(src), 3, 32, 32) and tex.dtype == torch.float32
    assert float(tex.min()) >= 0 and float(tex.max()) <= 1
    flat = tex.flatten(1)
    assert bool((flat.std(1) > 0.02).all()), "every texture has structure, none is blank"
    assert torch.unique(flat, dim=0).shape[0] == len(src), "tiles are distinct"


def test_skimage_rectangular_size_and_cache():
    src = texture_source("skimage", size=(24, 40), crops=1)
    a = src.get(0)
    assert a.shape == (3, 24, 40)
    a.zero_()  # callers get a copy: the cache is not corrupted
    assert float(src.get(0).sum()) > 0
    assert torch.equal(src.get(3), texture_source("skimage", size=(24, 40), crops=1).get(3))
    i, t = src.sample(torch.Generator().manual_seed(0))
    assert 0 <= i < len(src) and torch.equal(t, src.get(i))


def test_brick_tile_matches_the_picture():
    import skimage.data

    src = texture_source("skimage", size=256, crops=2)
    brick = skimage.data.brick()  # 512 x 512 gray: tile [0,0] is its top-left quarter, exactly
    k = src.labels.index("skimage:brick[0,0]")
    np.testing.assert_array_equal((src.get(k)[0].numpy() * 255).round().astype(np.uint8), brick[:256, :256])


def test_dtd_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("banded", "dotted"):
        for i in range(2):
            p = tmp_path / "dtd" / "images" / cls / f"{cls}_{i:04d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(p)
    for root in (tmp_path / "dtd", tmp_path / "dtd" / "images"):
        src = texture_source(root, size=16)
        assert len(src) == 4 and src.labels[0].endswith("banded_0000.jpg")
        assert src.get(3).shape == (3, 16, 16)


def test_dtd_bad_paths(tmp_path):
    with pytest.raises(DataError, match=r"texture folder .*nowhere does not exist"):
        texture_source(tmp_path / "nowhere")
    (tmp_path / "empty" / "banded").mkdir(parents=True)
    with pytest.raises(DataError, match=r"holds no images: expected .*<class>/\*\.jpg"):
        texture_source(tmp_path / "empty")
    bad = tmp_path / "broken" / "banded" / "x.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    src = texture_source(tmp_path / "broken", size=8)
    with pytest.raises(DataError, match=r"x\.jpg"):
        src.get(0)


def test_textures_by_size_builds_one_source_per_size_and_counts_without_decoding() -> None:
    from anoplug.data.textures import TexturesBySize

    tex = TexturesBySize("skimage", absent="perlin")
    assert tex(32) is tex((32, 32))  # kept per size: a second batch of that size reuses it
    assert tex((16, 24)) is not tex(32)
    assert tex((16, 24)).stack([0]).shape[-2:] == (16, 24)
    assert len(tex) == len(texture_source("skimage", size=8)) > 0
    assert len(TexturesBySize("perlin", absent="perlin")) == 0  # DRAEM's no-texture setting: nothing is loaded
