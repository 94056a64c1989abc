"""FPI: the conformance kit, the laws of both variants re-expressed, and (optionally) the official code side by side.

Laws: ``jemtan/FPI`` ``self_sup_task.py`` lines 30–79 (``patch_ex``) for ``variant="fpi"``;
``M-3LAB/ASBench`` ``destseg/data/FPI_generation.py`` lines 10–54 for ``variant="asbench"``.
Set ``ANOPLUG_FPI_SRC`` (a jemtan/FPI checkout; TensorFlow is stubbed when absent, only its
``to_categorical`` is referenced at import) and ``ANOPLUG_ASBENCH_SRC`` (an ASBench checkout) to run the
official functions on our draws and with their own RNG; those tests skip otherwise (nothing is vendored).
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
from anoplug_fpi.fpi import FPI
from scipy import stats

from anoplug.conditions import ConditionError
from anoplug.testing import GeneratorConformance, make_toy_batch
from anoplug.types import Batch

N_DRAWS = 2000
KS_CRIT = 1.95 / math.sqrt(N_DRAWS)  # one-sample KS, α = 0.001


def _paired(b: Batch) -> Batch:
    """Every image with the next one as its foreign image (what the drivers attach)."""
    order = [(i + 1) % len(b) for i in range(len(b))]
    return b.with_conditions(source_image=b.image[order].clone())


class TestFPIConformance(GeneratorConformance):
    generator_name = "fpi"
    bad_params = {"core_percent": 0.0, "alpha_max": 1.5, "variant": "nsa"}
    entry_module = "anoplug_fpi.plugin"

    def make_batch(self) -> Batch:  # the foreign images travel with the batch: output independent of batching
        return _paired(make_toy_batch(self.batch_size, self.image_size))


class TestFPIAsbenchConformance(GeneratorConformance):
    generator_class = FPI
    params = {"variant": "asbench"}


def _draws(n: int = N_DRAWS, size: tuple[int, int] = (256, 256), **params) -> list[dict]:
    b = Batch(image=torch.zeros(2, 3, *size))
    rngs = [torch.Generator().manual_seed(20_000 + i) for i in range(n)]
    g = FPI(**params)
    return [g.sample(b, [rngs[i], torch.Generator()])[0] for i in range(n)]  # sample 0 of a batch of two


# -- variant fpi: the laws of patch_ex ---------------------------------------------------------------
def test_half_width_is_uniform_13_to_50_at_256() -> None:
    """``randint(round(0.05·256), round(0.2·256))`` = U{13, …, 50}, from the first axis."""
    counts = np.bincount([d["half_width"] for d in _draws()], minlength=52)
    assert counts[:13].sum() == 0 and counts[51:].sum() == 0 and counts[50] > 0
    p = stats.chisquare(counts[13:51]).pvalue
    print(f"half-widths 13..50: chi² p = {p:.3f}")
    assert p > 0.001
    tall = _draws(200, size=(256, 64))
    assert max(d["half_width"] for d in tall) > 32  # the width follows H even when W is smaller


def test_centre_is_uniform_in_the_core() -> None:
    """``randint(int(0.1·256), int(0.9·256))`` = U{25, …, 229} per axis."""
    s = _draws()
    for axis in (0, 1):
        c = np.array([d["centre"][axis] for d in s])
        assert c.min() >= 25 and c.max() <= 229
        u = (c - 25 + torch.rand(len(c), generator=torch.Generator().manual_seed(axis)).numpy()) / 205
        d = float(stats.kstest(u, "uniform").statistic)
        print(f"centre axis {axis}: KS vs U{{25..229}} {d:.4f}, threshold {KS_CRIT:.4f}")
        assert d < KS_CRIT


def test_alpha_is_uniform_005_095() -> None:
    a = [d["alpha"] for d in _draws()]
    d = float(stats.kstest(a, stats.uniform(0.05, 0.9).cdf).statistic)
    print(f"alpha: KS vs U(0.05, 0.95) {d:.4f}, threshold {KS_CRIT:.4f}")
    assert d < KS_CRIT


def test_box_is_clipped_centre_plus_minus_half_width() -> None:
    for d in _draws(300):
        (cy, cx), w = d["centre"], d["half_width"]
        assert d["box"] == [max(cy - w, 0), min(cy + w, 256), max(cx - w, 0), min(cx + w, 256)]


def test_patch_is_interpolated_in_place_and_labelled_alpha() -> None:
    """Inside the box (1 − α)·I + α·S at the same pixels; the label is α where I ≠ S, 0 where they agree."""
    b = make_toy_batch(4, 64)
    foreign = make_toy_batch(4, 64, seed=8).image.clone()
    foreign[:, :, :32] = b.image[:, :, :32]  # the top half of each foreign image equals its destination
    out = FPI().generate(b.with_conditions(source_image=foreign), seed=2)
    for i in range(4):
        s = out.meta[i]["sample"]
        y0, y1, x0, x1 = s["box"]
        a = s["alpha"]
        box = torch.zeros(1, 64, 64, dtype=torch.bool)
        box[:, y0:y1, x0:x1] = True
        differs = (b.image[i] != foreign[i]).any(0, keepdim=True)
        expect = torch.where(box, (1 - a) * b.image[i] + a * foreign[i], b.image[i])
        assert (out.image[i] - expect).abs().max() < 1e-6
        assert torch.equal(out.mask[i].bool(), box & differs)
        assert torch.allclose(out.extras["soft_mask"][i], a * (box & differs).float())
        assert not bool(out.mask[i, :, :32].any())  # identical pixels are not anomalous ...
        assert torch.equal(out.image[i][:, :32], b.image[i][:, :32])  # ... and unchanged


def test_batch_mates_are_other_images_and_a_batch_of_one_needs_a_source() -> None:
    b = make_toy_batch(3, 16)
    mates = [[x["source_index"] for x in FPI().sample(b, [torch.Generator().manual_seed(3 * k + i) for i in range(3)])]
             for k in range(100)]
    for i in range(3):  # never itself, each other image about equally often
        counts = np.bincount([m[i] for m in mates], minlength=3)
        assert counts[i] == 0 and min(c for j, c in enumerate(counts) if j != i) > 25, (i, counts)
    one = make_toy_batch(1, 32)
    with pytest.raises(ConditionError, match="conditions.source_image"):
        FPI().generate(one, seed=0)
    paired = one.with_conditions(source_image=make_toy_batch(1, 32, seed=3).image)
    assert FPI().generate(paired, seed=0).label == ["fpi"]
    with pytest.raises(ConditionError, match="conditions.source_image"):  # read by neither: refused, not ignored
        FPI(source="batch").generate(_paired(make_toy_batch(3, 32)), seed=0)


# -- variant asbench: the laws of FPI_generation.py ------------------------------------------------
def test_asbench_radius_and_centre_laws() -> None:
    s = _draws(variant="asbench")
    counts = np.bincount([d["radius"] for d in s], minlength=27)
    assert counts[:13].sum() == 0 and counts[26:].sum() == 0  # randint(13, 26): 26 excluded
    p = stats.chisquare(counts[13:26]).pvalue
    print(f"asbench radii 13..25: chi² p = {p:.3f}")
    assert p > 0.001
    for axis in (0, 1):
        c = np.array([d["centre"][axis] for d in s])
        assert c.min() >= 64 and c.max() <= 191
        u = (c - 64 + torch.rand(len(c), generator=torch.Generator().manual_seed(axis)).numpy()) / 128
        assert float(stats.kstest(u, "uniform").statistic) < KS_CRIT


def test_asbench_intensity_draw_and_sign() -> None:
    s = _draws(variant="asbench")
    assert float(stats.kstest([d["intensity_draw"] for d in s], "uniform").statistic) < KS_CRIT
    neg = sum(d["negative"] for d in s)
    p = stats.binomtest(neg, len(s), 0.5).pvalue
    print(f"asbench negative shifts {neg}/{len(s)}: binomial p = {p:.3f}")
    assert p > 0.001


def test_asbench_disc_is_shifted_by_a_share_of_the_range_and_wraps() -> None:
    b = make_toy_batch(6, 96)
    for overflow in ("wrap", "clip"):
        out = FPI(variant="asbench", overflow=overflow).generate(b, seed=4)
        for i in range(6):
            s = out.meta[i]["sample"]
            levels = (b.image[i].double() * 255).round()
            span = float(levels.max() - levels.min())
            shift = 0.2 * span + (0.3 * span - 0.2 * span) * s["intensity_draw"]
            shift = -shift if s["negative"] else shift
            yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
            disc = ((yy - s["centre"][0]) ** 2 + (xx - s["centre"][1]) ** 2).double().sqrt() < s["radius"]
            assert torch.equal(out.mask[i, 0].bool(), disc)
            v = torch.trunc(levels + shift)
            v = v.remainder(256) if overflow == "wrap" else v.clamp(0, 255)
            expect = torch.where(disc, v / 255, levels / 255).float()
            assert (out.image[i] - expect).abs().max() < 1e-6
    wrapped = FPI(variant="asbench").generate(b, seed=4)
    clipped = FPI(variant="asbench", overflow="clip").generate(b, seed=4)
    assert not torch.equal(wrapped.image, clipped.image)  # the toy images reach past 0/255 somewhere


# -- side by side with the official code -------------------------------------------------------------
def _load(env: str, rel: str, name: str, monkeypatch) -> types.ModuleType:
    root = os.environ.get(env)
    if not root:
        pytest.skip(f"set {env} to the official checkout to run {rel} side by side")
    if rel.endswith("self_sup_task.py") and importlib.util.find_spec("tensorflow") is None:
        tf = types.ModuleType("tensorflow")  # only tf.keras.utils.to_categorical is referenced (num_classes ≠ None)
        tf.keras = types.SimpleNamespace(utils=types.SimpleNamespace(to_categorical=None))
        monkeypatch.setitem(sys.modules, "tensorflow", tf)
    spec = importlib.util.spec_from_file_location(name, Path(root) / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _NumpyRandom:
    """``numpy`` for an official module: ``random.*`` replays queued values, or records a seeded RNG's draws."""

    def __init__(self, queue: list | None = None, seed: int = 0) -> None:
        self.queue, self.calls = list(queue or []), []
        self._rs = np.random.RandomState(seed)
        self.random = types.SimpleNamespace(randint=self._randint, uniform=self._uniform)

    def _randint(self, *args, **kw):
        if self.queue:
            return self.queue.pop(0)
        v = self._rs.randint(*args, **kw)
        self.calls.append(("randint", args, v))
        return v

    def _uniform(self, low, high, size=None):
        if self.queue:
            u = self.queue.pop(0)
            return low + (high - low) * u if not isinstance(u, tuple) else u[1]
        v = self._rs.uniform(low, high, size)
        self.calls.append(("uniform", (low, high), v))
        return v

    def __getattr__(self, name: str):
        return getattr(np, name)


def test_official_patch_ex_on_our_draws_gives_our_output(monkeypatch) -> None:
    mod = _load("ANOPLUG_FPI_SRC", "self_sup_task.py", "fpi_official", monkeypatch)
    b = make_toy_batch(6, 64)
    paired = _paired(b)
    out = FPI().generate(paired, seed=1)
    s = [m["sample"] for m in out.meta]
    queue = [np.array([x["centre"][0] for x in s]), np.array([x["centre"][1] for x in s]),
             np.array([x["half_width"] for x in s]), ("interp", np.array([1 - x["alpha"] for x in s]))]
    mod.np = _NumpyRandom(queue)
    ima1 = b.image.permute(0, 2, 3, 1).double().numpy()
    ima2 = paired.conditions.source_image.permute(0, 2, 3, 1).double().numpy()
    (pex1, label), _ = mod.patch_ex(ima1, ima2)
    assert np.abs(pex1 - out.image.permute(0, 2, 3, 1).double().numpy()).max() < 1e-6
    assert np.abs(label[..., 0] - out.extras["soft_mask"][:, 0].double().numpy()).max() < 1e-6


def test_official_patch_ex_draws_match_ours_in_law(monkeypatch) -> None:
    """patch_ex with its own (seeded) RNG on 256×32 frames: the draws it makes vs ours, two-sample tests."""
    mod = _load("ANOPLUG_FPI_SRC", "self_sup_task.py", "fpi_official", monkeypatch)
    mod.np = spy = _NumpyRandom(seed=0)
    frames = np.zeros((250, 256, 32, 1), np.float32)
    for _ in range(N_DRAWS // 250):
        mod.patch_ex(frames, frames + 1)
    rows, cols, widths = (np.concatenate([c[2] for c in spy.calls[k::4]]) for k in range(3))
    alphas = 1 - np.concatenate([c[2] for c in spy.calls[3::4]])
    ours = _draws(size=(256, 32))
    for what, theirs, mine in (("row centre", rows, [d["centre"][0] for d in ours]),
                               ("column centre", cols, [d["centre"][1] for d in ours]),
                               ("half-width", widths, [d["half_width"] for d in ours]),
                               ("alpha", alphas, [d["alpha"] for d in ours])):
        res = stats.ks_2samp(theirs, mine)
        print(f"{what}: patch_ex vs ours KS {res.statistic:.4f}, p = {res.pvalue:.3f}")
        assert res.pvalue > 0.001, what
        if what != "alpha":  # integer laws: the same support
            assert (min(theirs), max(theirs)) == (min(mine), max(mine)), what


def test_asbench_fpi_on_our_draws_gives_our_bytes(monkeypatch) -> None:
    from PIL import Image

    mod = _load("ANOPLUG_ASBENCH_SRC", "destseg/data/FPI_generation.py", "asbench_fpi", monkeypatch)
    b = make_toy_batch(6, 128, seed=5)
    out = FPI(variant="asbench").generate(b, seed=3)
    for i in range(len(b)):
        s = out.meta[i]["sample"]
        mod.np = _NumpyRandom([s["centre"][0], s["centre"][1], s["radius"], s["intensity_draw"], int(s["negative"])])
        pil = Image.fromarray((b.image[i] * 255).round().byte().permute(1, 2, 0).numpy())
        img, mask = mod.synthesize_anomalies_pil(pil)
        assert np.array_equal(mask[0], out.mask[i, 0].numpy()), i
        assert np.array_equal(np.asarray(img), (out.image[i] * 255).round().byte().permute(1, 2, 0).numpy()), i


def test_asbench_fpi_draws_match_ours_in_law(monkeypatch) -> None:
    from PIL import Image

    mod = _load("ANOPLUG_ASBENCH_SRC", "destseg/data/FPI_generation.py", "asbench_fpi", monkeypatch)
    mod.np = spy = _NumpyRandom(seed=1)
    mod.create_mask = lambda im, center, radius: np.zeros(im.shape[:2] + (1,))  # draws only: skip the pixel loop
    blank = Image.fromarray(np.full((256, 256, 3), 100, np.uint8))
    for _ in range(N_DRAWS):
        mod.synthesize_anomalies_pil(blank)
    calls = [c[2] for c in spy.calls]
    rows, cols, radii, signs = (np.array(calls[k::5], float) for k in (0, 1, 2, 4))
    ours = _draws(variant="asbench")
    for what, theirs, mine in (("row centre", rows, [d["centre"][0] for d in ours]),
                               ("column centre", cols, [d["centre"][1] for d in ours]),
                               ("radius", radii, [d["radius"] for d in ours]),
                               ("sign", signs, [float(d["negative"]) for d in ours])):
        res = stats.ks_2samp(theirs, mine)
        print(f"{what}: FPI_generation vs ours KS {res.statistic:.4f}, p = {res.pvalue:.3f}")
        assert res.pvalue > 0.001, what
        assert theirs.min() == min(mine) and theirs.max() == max(mine), what
