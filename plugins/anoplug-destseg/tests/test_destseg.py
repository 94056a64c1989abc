"""DeSTSeg-Perlin: the conformance kit, DeSTSeg's laws re-expressed, and (optionally) its code side by side.

Laws: ``apple/ml-destseg`` ``data/data_utils.py`` lines 61–98 (``perlin_noise``) as called by
``data/mvtec_dataset.py`` lines 59–83. Set ``ANOPLUG_DESTSEG_SRC`` (an ml-destseg checkout) and/or
``ANOPLUG_ASBENCH_SRC`` (its copy in ``destseg/data/data_utils.py``) to run ``perlin_noise`` on our
draws; imgaug is stubbed (its one use, the noise rotation, is given our angle and rotated by the host's
``anoplug.noise.rotate``). Those tests skip otherwise; nothing is vendored.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from anoplug_destseg.destseg import DeSTSegPerlin
from scipy import stats

from anoplug.data.textures import texture_source
from anoplug.noise import rotate
from anoplug.params import ParamError
from anoplug.testing import GeneratorConformance, make_toy_batch
from anoplug.types import Batch

N_DRAWS = 2000
KS_CRIT = 1.95 / math.sqrt(N_DRAWS)  # one-sample KS, α = 0.001


class TestDeSTSegConformance(GeneratorConformance):
    generator_name = "destseg-perlin"
    bad_params = {"probability": 1.5, "beta_max": -0.1, "max_scale_exp": 0}
    entry_module = "anoplug_destseg.plugin"


def _draws(n: int = N_DRAWS, **params) -> list[dict]:
    b = Batch(image=torch.zeros(1, 3, 8, 8))
    g = DeSTSegPerlin(**params)
    return g.sample(b, [torch.Generator().manual_seed(30_000 + i) for i in range(n)])


# -- the laws, re-expressed ------------------------------------------------------------------------
@pytest.mark.parametrize("max_exp", [6, 4])
def test_scale_exponents_are_uniform(max_exp: int) -> None:
    """``torch.randint(0, 6)`` per axis (ml-destseg); ASBench's copy uses ``torch.randint(0, 4)``."""
    s = _draws(**({} if max_exp == 6 else {"max_scale_exp": max_exp}))  # 6 is the default
    for axis in (0, 1):
        e = np.log2([d["scales"][axis] for d in s]).astype(int)
        counts = np.bincount(e, minlength=max_exp + 1)
        assert counts[max_exp:].sum() == 0
        p = stats.chisquare(counts[:max_exp]).pvalue
        print(f"max exp {max_exp}, axis {axis}: exponent counts {counts[:max_exp].tolist()}, chi² p = {p:.3f}")
        assert p > 0.001
    same = sum(d["scales"][0] == d["scales"][1] for d in s)  # the two axes are drawn independently
    assert stats.binomtest(same, len(s), 1 / max_exp).pvalue > 0.001


def test_beta_and_angle_laws() -> None:
    s = _draws()
    d_beta = float(stats.kstest([d["beta"] for d in s], stats.uniform(0, 0.8).cdf).statistic)
    d_angle = float(stats.kstest([d["angle"] for d in s], stats.uniform(-90, 180).cdf).statistic)
    print(f"beta: KS vs U(0, 0.8) {d_beta:.4f}; angle: KS vs U(-90, 90) {d_angle:.4f}; threshold {KS_CRIT:.4f}")
    assert d_beta < KS_CRIT and d_angle < KS_CRIT


def test_every_image_is_synthetic_by_default() -> None:
    """DeSTSeg calls ``perlin_noise(..., aug_prob=1.0)``: no image is left normal (DRAEM leaves half)."""
    assert all(d["anomalous"] for d in _draws(500))
    half = sum(d["anomalous"] for d in _draws(probability=0.5))
    assert stats.binomtest(half, N_DRAWS, 0.5).pvalue > 0.001


def test_the_texture_is_pasted_raw_without_augmenters() -> None:
    """With β = 0 the mask holds the resized texture itself: DeSTSeg applies none of DRAEM's augmenters."""
    b = make_toy_batch(6, 64)
    out = DeSTSegPerlin(beta_max=0.0).generate(b, seed=3)
    src = texture_source("skimage", size=(64, 64))
    assert sum(out.mask.flatten(1).any(1).tolist()) >= 4  # an empty Perlin mask is possible, not common
    for i in range(6):
        m = out.mask[i].bool().expand(3, -1, -1)
        tex = src.get(out.meta[i]["sample"]["texture"])
        assert torch.equal(out.image[i][m], tex[m]), i


def test_blend_inside_and_untouched_outside() -> None:
    b = make_toy_batch(6, 64)
    out = DeSTSegPerlin().generate(b, seed=5)
    src = texture_source("skimage", size=(64, 64))
    for i in range(6):
        s = out.meta[i]["sample"]
        m = out.mask[i].bool().expand(3, -1, -1)
        expect = (1 - s["beta"]) * src.get(s["texture"]) + s["beta"] * b.image[i]
        assert (out.image[i][m] - expect[m]).abs().max() < 1e-6
        assert torch.equal(out.image[i][~m], b.image[i][~m])


def test_mask_is_rotated_noise_above_half() -> None:
    """Lowering the threshold grows the mask; above the noise's range nothing is anomalous (and labelled so)."""
    b = make_toy_batch(8, 64)
    at = {t: DeSTSegPerlin(threshold=t).generate(b, seed=1) for t in (0.3, 0.5, 1.0)}
    assert bool((at[0.5].mask <= at[0.3].mask).all()) and at[0.3].mask.sum() > at[0.5].mask.sum()
    assert not at[1.0].mask.any() and at[1.0].label == ["good"] * 8 and torch.equal(at[1.0].image, b.image)


def test_scale_validation_names_the_field() -> None:
    with pytest.raises(ParamError, match="min_scale_exp"):
        DeSTSegPerlin(min_scale_exp=4, max_scale_exp=4)


# -- side by side with perlin_noise (needs ANOPLUG_DESTSEG_SRC or ANOPLUG_ASBENCH_SRC) ------------------
SOURCES = {"ml-destseg": ("ANOPLUG_DESTSEG_SRC", "data/data_utils.py", 6),
           "asbench": ("ANOPLUG_ASBENCH_SRC", "destseg/data/data_utils.py", 4)}


class _Rotation:
    """Stands in for imgaug's module-level ``rot``: rotates by the queued angle with the host's rotation."""

    angles: list[float] = []

    def __init__(self, *args, **kw) -> None:
        pass

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(images, np.float32))[None, None]
        return rotate(x, torch.tensor([self.angles.pop(0)]))[0, 0].double().numpy()


class _Torch:
    """``torch`` for the official module: randint/rand replay queued values and record their bounds."""

    def __init__(self, ints: list[int], floats: list[float]) -> None:
        self.ints, self.floats, self.bounds = list(ints), list(floats), []

    def randint(self, low: int, high: int, size: tuple) -> torch.Tensor:
        self.bounds.append((low, high))
        return torch.tensor([self.ints.pop(0)])

    def rand(self, n: int) -> torch.Tensor:
        return torch.tensor([self.floats.pop(0)], dtype=torch.float32)


class _Numpy:
    def __init__(self, gradient_draws: list[np.ndarray]) -> None:
        self._draws = list(gradient_draws)
        self.random = types.SimpleNamespace(rand=lambda *shape: self._draws.pop(0))

    def __getattr__(self, name: str):
        return getattr(np, name)


def _official(which: str, monkeypatch) -> tuple[types.ModuleType, int]:
    env, rel, max_exp = SOURCES[which]
    root = os.environ.get(env)
    if not root:
        pytest.skip(f"set {env} to run {which}'s perlin_noise side by side")
    if importlib.util.find_spec("imgaug") is None:  # only iaa.Sequential([iaa.Affine(rotate=...)]) is used
        aug = types.ModuleType("imgaug.augmenters")
        aug.Sequential, aug.Affine = _Rotation, _Rotation
        pkg = types.ModuleType("imgaug")
        pkg.augmenters = aug
        monkeypatch.setitem(sys.modules, "imgaug", pkg)
        monkeypatch.setitem(sys.modules, "imgaug.augmenters", aug)
    spec = importlib.util.spec_from_file_location(f"destseg_utils_{which}", Path(root) / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.rot = _Rotation()
    return mod, max_exp


@pytest.mark.parametrize("which", sorted(SOURCES))
def test_official_perlin_noise_on_our_draws_gives_our_output(which: str, monkeypatch) -> None:
    mod, max_exp = _official(which, monkeypatch)
    b = make_toy_batch(8, 64, seed=2)
    out = DeSTSegPerlin(**({} if max_exp == 6 else {"max_scale_exp": max_exp})).generate(b, seed=7)
    src = texture_source("skimage", size=(64, 64))
    agree = total = 0
    for i in range(len(b)):
        s = out.meta[i]["sample"]
        g = s["gradients"].double()
        turns = (torch.atan2(g[..., 1], g[..., 0]) / (2 * math.pi)) % 1.0  # np.random.rand → angle / 2π
        exps = [int(math.log2(v)) for v in s["scales"]]
        shim = _Torch(exps, [s["beta"] / 0.8, 0.0])  # beta = rand·0.8; no_anomaly = 0 (aug_prob = 1)
        mod.torch, mod.np = shim, _Numpy([turns.numpy()])
        _Rotation.angles = [s["angle"]]
        image = (b.image[i] * 255).round().byte().permute(1, 2, 0).numpy()
        texture = src.get_uint8(s["texture"]).permute(1, 2, 0).numpy()
        aug, msk = mod.perlin_noise(image, texture, aug_prob=1.0)
        assert shim.bounds == [(0, max_exp)] * 2, shim.bounds  # the scale law's bounds, as the official draws them
        theirs, ours = msk[0].astype(bool), out.mask[i, 0].numpy().astype(bool)
        agree, total = agree + int((theirs == ours).sum()), total + theirs.size
        both = theirs & ours
        ours_img = out.image[i].permute(1, 2, 0).double().numpy()
        assert np.abs(aug[both] - ours_img[both]).max(initial=0) < 1e-5
        assert np.abs(aug[~theirs & ~ours] - ours_img[~theirs & ~ours]).max(initial=0) < 1e-6
    print(f"{which}: masks agree on {agree / total:.5%} of pixels")
    assert agree / total > 0.999  # float32 vs float64 noise: a rare pixel right at the threshold may flip
