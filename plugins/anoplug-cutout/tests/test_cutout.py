"""CutOut: the conformance kit and the laws of ASBench's CutOut, re-expressed and (optionally) side by side.

The laws come from ``M-3LAB/ASBench``: ``destseg/data/CutOut.py`` lines 27–41 (identical copies in
``DRAEM/`` and ``MemSeg/data/``) and the loaders' ``Cutout(n_holes=1, length=random.randint(20, 50))``
(``destseg/data/mvtec_dataset.py`` line 209). Set ``ANOPLUG_ASBENCH_SRC`` to an ASBench checkout to
also run its ``Cutout`` on our draws and compare bytes; those tests skip otherwise (nothing is vendored).
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from anoplug_cutout.cutout import CutOut
from scipy import stats

from anoplug.testing import GeneratorConformance, make_toy_batch
from anoplug.types import Batch

N_DRAWS = 2000
KS_CRIT = 1.95 / math.sqrt(N_DRAWS)  # one-sample KS, α = 0.001


class TestCutOutConformance(GeneratorConformance):
    generator_name = "cutout"
    bad_params = {"n_holes": 0, "length_min": 0, "fill": 1.5}
    entry_module = "anoplug_cutout.plugin"


class TestCutOutThreeHoles(GeneratorConformance):
    generator_class = CutOut
    params = {"n_holes": 3, "fill": 0.5, "scale_with_image": False}


def _draws(n: int = N_DRAWS, size: int = 256, **params) -> list[dict]:
    b = Batch(image=torch.zeros(1, 3, size, size))
    return CutOut(**params).sample(b, [torch.Generator().manual_seed(10_000 + i) for i in range(n)])


# -- the laws, re-expressed ------------------------------------------------------------------------
def test_hole_length_is_inclusive_uniform_20_to_50() -> None:
    """``random.randint(20, 50)`` includes 50: 31 equally likely lengths."""
    counts = np.bincount([d["length"] for d in _draws()], minlength=51)
    assert counts[:20].sum() == 0 and counts[50] > 0
    p = stats.chisquare(counts[20:51]).pvalue
    print(f"hole lengths 20..50: chi² p = {p:.3f}")
    assert p > 0.001


def test_hole_side_is_twice_half_the_length() -> None:
    """The box is centre ± L//2, so an odd L gives the even side L − 1 (never L itself)."""
    for d in _draws(200):
        assert d["half"] == [d["length"] // 2] * 2


def test_centre_is_uniform_over_every_pixel() -> None:
    """``np.random.randint(height)``: the centre may sit on the border (the hole is then truncated)."""
    s = _draws()
    for axis in (0, 1):
        c = np.array([d["centres"][0][axis] for d in s])
        counts = np.bincount(c // 16, minlength=16)  # 16 bands of 16 pixels
        p = stats.chisquare(counts).pvalue
        print(f"centre axis {axis}: chi² p over 16 bands = {p:.3f}")
        assert p > 0.001
        u = (c + torch.rand(len(c), generator=torch.Generator().manual_seed(axis)).numpy()) / 256
        assert float(stats.kstest(u, "uniform").statistic) < KS_CRIT


def test_boxes_are_clipped_centre_plus_minus_half() -> None:
    for d in _draws(500):
        (y, x), (hy, hx) = d["centres"][0], d["half"]
        assert d["boxes"][0] == [int(np.clip(y - hy, 0, 256)), int(np.clip(y + hy, 0, 256)),
                                 int(np.clip(x - hx, 0, 256)), int(np.clip(x + hx, 0, 256))]
    truncated = sum(d["boxes"][0][1] - d["boxes"][0][0] < 2 * d["half"][0] for d in _draws(500))
    assert truncated > 0  # border holes exist: they are not moved inside the image


def test_the_hole_is_black_and_is_the_mask() -> None:
    b = make_toy_batch(6, 64)
    out = CutOut().generate(b, seed=1)
    for i in range(6):
        y0, y1, x0, x1 = out.meta[i]["sample"]["boxes"][0]
        hole = torch.zeros(1, 64, 64)
        hole[:, y0:y1, x0:x1] = 1
        assert torch.equal(out.mask[i], hole), i
        assert bool((out.image[i][:, y0:y1, x0:x1] == 0).all())
        outside = hole.expand(3, -1, -1) == 0
        assert torch.equal(out.image[i][outside], b.image[i][outside])
    assert out.label == ["cutout"] * 6


def test_sizes_rescale_per_axis_from_256() -> None:
    """At 128×64 a hole of half-side h at 256² has half-sides round(h/2) × round(h/4)."""
    b = Batch(image=torch.zeros(1, 3, 128, 64))
    s = CutOut().sample(b, [torch.Generator().manual_seed(i) for i in range(100)])
    assert all(d["half"] == [max(1, round((d["length"] // 2) / 2)), max(1, round((d["length"] // 2) / 4))] for d in s)
    fixed = CutOut(scale_with_image=False).sample(b, [torch.Generator().manual_seed(i) for i in range(100)])
    assert all(d["half"] == [d["length"] // 2] * 2 for d in fixed)


def test_holes_of_one_image_share_its_length_and_unite() -> None:
    b = make_toy_batch(2, 64)
    out = CutOut(n_holes=4, scale_with_image=False).generate(b, seed=5)
    for i in range(2):
        union = torch.zeros(1, 64, 64)
        for y0, y1, x0, x1 in out.meta[i]["sample"]["boxes"]:
            union[:, y0:y1, x0:x1] = 1
        assert torch.equal(out.mask[i], union)


# -- side by side with ASBench's own Cutout (needs ANOPLUG_ASBENCH_SRC) ----------------------------
def _asbench_cutout() -> type:
    root = os.environ.get("ANOPLUG_ASBENCH_SRC")
    if not root:
        pytest.skip("set ANOPLUG_ASBENCH_SRC to an M-3LAB/ASBench checkout to compare with its Cutout")
    path = Path(root) / "destseg" / "data" / "CutOut.py"
    spec = importlib.util.spec_from_file_location("asbench_cutout", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Replay:
    """``numpy`` for the official module, whose ``random.randint`` returns our recorded draws in order."""

    def __init__(self, values: list[int]) -> None:
        self._values = list(values)
        self.random = types.SimpleNamespace(randint=self._randint)

    def _randint(self, high: int) -> int:
        return self._values.pop(0)

    def __getattr__(self, name: str):
        return getattr(np, name)


def test_asbench_cutout_on_our_draws_gives_our_bytes() -> None:
    from PIL import Image

    mod = _asbench_cutout()
    b = make_toy_batch(12, 256, seed=3)
    out = CutOut().generate(b, seed=0)
    for i in range(len(b)):
        s = out.meta[i]["sample"]
        mod.np = _Replay([v for c in s["centres"] for v in c])  # y then x, as the official draws them
        pil = Image.fromarray((b.image[i] * 255).round().byte().permute(1, 2, 0).numpy())
        img, mask = mod.Cutout(n_holes=1, length=s["length"])(pil)
        assert np.array_equal(mask, out.mask[i].numpy()), i
        assert np.array_equal(np.round(img * 255).astype(np.uint8),
                              (out.image[i] * 255).round().byte().permute(1, 2, 0).numpy()), i


def test_asbench_holes_match_ours_in_law() -> None:
    """The official code with its own RNG (length as its loader draws it) vs our sampler: two-sample KS
    on the hole's four edges and its area, read from the masks."""
    from PIL import Image

    mod = _asbench_cutout()
    np.random.seed(0)
    random.seed(0)
    blank = Image.fromarray(np.full((256, 256, 3), 128, np.uint8))

    def edges(mask: np.ndarray) -> list[float]:
        rows, cols = np.nonzero(mask.any(1)), np.nonzero(mask.any(0))
        return [rows[0][0], rows[0][-1] + 1, cols[0][0], cols[0][-1] + 1, mask.sum()]

    theirs = np.array([edges(mod.Cutout(n_holes=1, length=random.randint(20, 50))(blank)[1][0]) for _ in range(N_DRAWS)])
    ours = np.array([[*d["boxes"][0], (d["boxes"][0][1] - d["boxes"][0][0]) * (d["boxes"][0][3] - d["boxes"][0][2])]
                     for d in _draws()])
    for k, what in enumerate(("top", "bottom", "left", "right", "area")):
        res = stats.ks_2samp(theirs[:, k], ours[:, k])
        print(f"hole {what}, ASBench vs ours: KS {res.statistic:.4f}, p = {res.pvalue:.3f}")
        assert res.pvalue > 0.001, what
