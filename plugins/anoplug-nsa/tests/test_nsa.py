"""NSA: the conformance kit, the Poisson solver against OpenCV, and the sampling laws.

Fidelity tests use Kolmogorov–Smirnov on 2,000 draws at fixed seeds; the threshold is the
α = 0.001 critical value of the one-sample KS statistic, 1.95 / sqrt(n) ≈ 0.0436.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from anoplug_nsa import presets
from anoplug_nsa.labels import binary_median, disk_median_at
from anoplug_nsa.nsa import NSA, _heuristic_object, _resize_u8
from anoplug_nsa.poisson import CloneJob, seamless_clone
from scipy import stats

from anoplug.testing import GeneratorConformance, make_toy_batch
from anoplug.types import Batch, to_uint8

N_DRAWS = 2000
KS_CRIT = 1.95 / math.sqrt(N_DRAWS)  # α = 0.001


def _with_sources(b: Batch) -> Batch:
    """Pair every image with another normal image (the next one), as NSA's loader does."""
    order = [(i + 1) % len(b) for i in range(len(b))]
    return b.with_conditions(source_image=b.image[order].clone(), source_object_mask=b.object_mask[order].clone())


class TestNSAConformance(GeneratorConformance):
    generator_name = "nsa"
    image_size = 96
    bad_params = {"num_patches": 11, "gamma_scale": 0.0, "clone": "poisson"}
    entry_module = "anoplug_nsa.plugin"

    def make_batch(self) -> Batch:  # sources travel with the batch: output independent of batching
        return _with_sources(make_toy_batch(self.batch_size, self.image_size))


class TestNSATextureSelfConformance(GeneratorConformance):
    generator_class = NSA
    params = {"category": "carpet", "source": "self", "soft_label": False}
    image_size = 96


# -- the Poisson solver ---------------------------------------------------------------------
def _smooth_noisy(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    low = torch.from_numpy(rng.uniform(0, 255, (1, 3, h // 8 + 1, w // 8 + 1)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    return np.clip(smooth.numpy() + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)


def test_poisson_solver_agrees_with_opencv_seamless_clone() -> None:
    """Agreement reached: ≥ 99.5 % of changed pixels identical, never more than 1 grey level apart."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    changed_total, equal_total, worst = 0, 0, 0
    for t in range(16):
        dst = _smooth_noisy(rng, 128, 128)
        ph, pw = (int(v) for v in rng.integers(12, 60, 2))
        src = _smooth_noisy(rng, ph, pw)
        mask = np.full((ph, pw), 255, np.uint8)
        if t % 2:  # irregular (elliptic) masks exercise the erosion and zero-padded source
            yy, xx = np.mgrid[:ph, :pw]
            mask = ((((yy - ph / 2) / (ph / 2.2)) ** 2 + ((xx - pw / 2) / (pw / 2.5)) ** 2) < 1).astype(np.uint8) * 255
        mask[0], mask[-1], mask[:, 0], mask[:, -1] = 0, 0, 0, 0
        cy, cx = int(rng.integers(ph // 2 + 1, 128 - ph // 2 - 1)), int(rng.integers(pw // 2 + 1, 128 - pw // 2 - 1))
        mixed = t % 4 >= 2
        ref = cv2.seamlessClone(src, dst, mask.copy(), (cx, cy), cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE)
        images = torch.from_numpy(dst).permute(2, 0, 1)[None].float()
        job = CloneJob(0, torch.from_numpy(src).permute(2, 0, 1).float(), torch.from_numpy(mask > 0), (cx, cy))
        assert seamless_clone(images, [job], [mixed]) == [True]
        ours = images[0].permute(1, 2, 0).numpy().astype(int)
        diff = np.abs(ours - ref.astype(int)).max(-1)
        changed = (ref != dst).any(-1) | (ours != dst).any(-1)
        changed_total += int(changed.sum())
        equal_total += int((diff[changed] == 0).sum())
        worst = max(worst, int(diff.max()))
    print(f"seamlessClone agreement: {equal_total / changed_total:.4%} of changed pixels identical, max diff {worst}")
    assert worst <= 1 and equal_total / changed_total >= 0.995


def test_batched_clones_equal_single_clones() -> None:
    rng = np.random.default_rng(1)
    imgs = torch.from_numpy(np.stack([_smooth_noisy(rng, 64, 64) for _ in range(3)])).permute(0, 3, 1, 2).float()
    jobs = [CloneJob(i, torch.from_numpy(_smooth_noisy(rng, 20 + 4 * i, 30 - 3 * i)).permute(2, 0, 1).float(),
                     torch.ones(20 + 4 * i, 30 - 3 * i, dtype=torch.bool), (32, 30 + i)) for i in range(3)]
    together = imgs.clone()
    seamless_clone(together, jobs, [False, True, False])
    for i, job in enumerate(jobs):
        alone = imgs.clone()
        seamless_clone(alone, [job], [i == 1])
        assert torch.equal(alone[i], together[i])


# -- the whole generator against the OpenCV path ------------------------------------------------
@pytest.mark.parametrize("category", ["fabric", "capsule"])
def test_generator_agrees_with_the_opencv_path(category: str) -> None:
    """Same sampled geometry through cv2 (seamlessClone, medianBlur, skimage's disk median).

    The resize is shared (ours) to isolate blending and labels: ours equals OpenCV's on ≥ 98 %
    of pixels and differs by 1 grey level elsewhere, which the
    Poisson solve then spreads (see the README for the end-to-end figures).
    """
    pytest.importorskip("cv2")
    from anoplug_nsa.reference import reference_one

    from anoplug.data.toy import ToyDataset

    b = ToyDataset(category, size=128).batch(list(range(6)))
    out = NSA().generate(b, seed=3)
    dest, ours = to_uint8(b.image), to_uint8(out.image)

    def our_resize(x: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
        t = _resize_u8(torch.from_numpy(x).permute(2, 0, 1).float(), (wh[1], wh[0]))
        return t.clamp(0, 255).permute(1, 2, 0).numpy().astype(np.uint8)

    equal, changed, ious, soft_err = 0, 0, [], []
    for i in range(len(b)):
        s = out.meta[i]["sample"]
        j = i if s["source_index"] is None else s["source_index"]
        objs = [None, None] if b.object_mask is None else [b.object_mask[k, 0].numpy() > 0 for k in (i, j)]
        img, lab, soft = reference_one(dest[i], dest[j], s, objs[0], objs[1], resize=our_resize)
        diff = np.abs(img.astype(int) - ours[i].astype(int)).max(-1)
        ch = (img != dest[i]).any(-1) | (ours[i] != dest[i]).any(-1)
        assert diff.max() <= 1
        equal, changed = equal + int((diff[ch] == 0).sum()), changed + int(ch.sum())
        a, r = out.mask[i, 0].numpy() > 0, lab > 0
        ious.append((a & r).sum() / max((a | r).sum(), 1))
        soft_err.append(float(np.abs(soft - out.extras["soft_mask"][i, 0].numpy()).mean()))
    print(f"{category}: {equal / changed:.4%} changed pixels identical, label IoU {np.mean(ious):.4f}, "
          f"soft label mean |diff| {np.mean(soft_err):.5f}")
    assert equal / changed >= 0.97 and np.mean(ious) >= 0.98 and np.mean(soft_err) < 0.01


# -- labels ---------------------------------------------------------------------------------------
def test_binary_median_is_opencv_median_blur() -> None:
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(3, 1, 40, 50, generator=g) > 0.5).float()
    for size in (5, 7):
        ours = binary_median(m, size)
        ref = np.stack([cv2.medianBlur(x[0].numpy().astype(np.uint8), size) for x in m])
        assert np.array_equal(ours[:, 0].numpy().astype(np.uint8), ref)


def test_disk_median_is_skimage_median() -> None:
    from skimage.filters import median
    from skimage.morphology import disk

    g = torch.Generator().manual_seed(1)
    values = torch.randint(0, 766, (2, 1, 40, 40), generator=g).float() / 3
    where = torch.rand(2, 1, 40, 40, generator=g) > 0.7
    ours = disk_median_at(values, where)
    for i in range(2):
        ref = median(values[i, 0].double().numpy(), disk(5))
        w = where[i, 0].numpy()
        assert np.allclose(ours[i, 0].numpy()[w], ref[w], atol=1e-4)


def test_heuristic_object_mask_is_nsa_rule() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    img = _smooth_noisy(rng, 64, 64)
    levels = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ours = _heuristic_object(levels, (200, 60))[0].numpy()
    ref = cv2.medianBlur((np.abs(img.mean(-1) - 200) > 60).astype(np.uint8), 7)
    assert np.array_equal(ours, ref > 0)


def test_label_is_where_the_image_changed() -> None:
    b = make_toy_batch(4, 96)
    out = NSA(category="carpet").generate(b, seed=2)
    change = (out.image - b.image).abs().mean(1, keepdim=True) * 255
    assert out.mask.any()
    assert float(change[out.mask.bool()].median()) > 1.0  # the label marks real change, not the patch box
    soft = out.extras["soft_mask"]
    assert bool((soft <= out.mask).all()) and bool((soft >= 0).all())


# -- sampling laws --------------------------------------------------------------------------------
class _Shapes:
    """Stands in for a large batch: sampling without object masks reads sizes and meta, no pixels."""

    def __init__(self, n: int, size: tuple[int, int]) -> None:
        self.size, self.meta, self.extras, self.object_mask, self._n = size, [{}] * n, {}, None, n

    def __len__(self) -> int:
        return self._n


def _draws(n: int = N_DRAWS, category: str = "carpet", size: int = 256, seed: int = 0) -> list[dict]:
    b = _Shapes(n, (size, size))
    rngs = [torch.Generator().manual_seed(seed * 100_000 + i) for i in range(n)]
    return NSA(category=category, source="self", object_aware=False).sample(b, rngs)


def test_half_widths_follow_offset_gamma() -> None:
    s = _draws()
    raw = [d for x in s for p in x["patches"] if p for d in p["half_draw"]][:N_DRAWS]
    law = stats.gamma(a=2, loc=0.03, scale=0.05)
    d = float(stats.kstest(raw, law.cdf).statistic)
    print(f"KS half-width draws vs 0.03 + Gamma(2, 0.05): {d:.4f}, threshold {KS_CRIT:.4f}")
    assert d < KS_CRIT
    lo, hi = round(0.03 * 256), round(0.4 * 256)
    for x in s:
        for p in x["patches"]:
            if p:
                assert p["half_widths"] == [int(min(max(v * 256, lo), hi)) for v in p["half_draw"]]


def test_resize_factor_is_clipped_normal() -> None:
    s = _draws(seed=1)
    raw = [p["scale_draw"] for x in s for p in x["patches"] if p][:N_DRAWS]
    d = float(stats.kstest(raw, stats.norm(1, 0.5).cdf).statistic)
    print(f"KS resize draws vs N(1, 0.5): {d:.4f}, threshold {KS_CRIT:.4f}")
    assert d < KS_CRIT
    assert all(0.5 <= p["scale"] <= 2.0 for x in s for p in x["patches"] if p)  # texture bounds


@pytest.mark.parametrize("category,n", [("carpet", 4), ("bottle", 3)])
def test_patch_count_is_one_plus_binomial(category: str, n: int) -> None:
    s = _draws(category=category, seed=2)
    counts = np.bincount([x["n_drawn"] for x in s], minlength=n + 1)[1:]
    expected = np.array([stats.binom(n - 1, 0.5).pmf(k) for k in range(n)]) * len(s)
    p = stats.chisquare(counts, expected).pvalue
    print(f"{category}: patch counts {counts.tolist()} vs {expected.round(1).tolist()}, chi² p = {p:.3f}")
    assert p > 0.001


# -- presets and sources ---------------------------------------------------------------------------
def test_presets_cover_mvtec_and_toy_names() -> None:
    assert presets.resolve("screw", False)[1].num_patches == 4
    assert presets.resolve("capsule", False)[1].logistic == (0.5, 4)
    assert presets.resolve("fabric", False) == ("carpet", presets.MVTEC["carpet"])
    assert presets.resolve("nut", True)[0] == "metal_nut"
    assert presets.resolve("mystery", True)[0] == "object" and presets.resolve("mystery", False)[0] == "texture"
    assert presets.MVTEC["wood"].clone == "mixed" and presets.MVTEC["bottle"].clone == "normal"


def test_category_auto_reads_the_batch_meta() -> None:
    from anoplug.data.toy import ToyDataset

    b = ToyDataset("fabric", size=64).batch([0, 1])
    s = NSA().sample(b, [torch.Generator().manual_seed(0) for _ in range(2)])
    assert s[0]["preset"] == "carpet" and s[0]["clone"] == "mixed"


def test_source_modes() -> None:
    b = make_toy_batch(4, 64)
    rngs = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    assert [x["source_index"] for x in NSA(source="self").sample(b, rngs())] == [None] * 4  # its own image
    assert all(x["source_index"] != i for i, x in enumerate(NSA(source="batch").sample(b, rngs())))
    paired = _with_sources(make_toy_batch(4, 64))
    assert all(x["source"] == "paired" for x in NSA().sample(paired, rngs()))
    with pytest.raises(ValueError, match="source_image"):
        paired.with_conditions(source_image=paired.image[:, :, :32])
    with pytest.raises(ValueError, match="conditions.boxes"):
        NSA().generate(paired.with_conditions(boxes=[[]] * 4), seed=0)


def test_a_batch_of_one_without_a_source_is_an_error_not_a_self_paste():
    """Review fix: with one image and no paired source the old code silently pasted from the image itself."""
    from anoplug.conditions import ConditionError
    from anoplug.testing import make_toy_batch

    one = make_toy_batch(1, 64)
    with pytest.raises(ConditionError, match="conditions.source_image"):
        NSA().generate(one, seed=0)
    paired = one.with_conditions(source_image=make_toy_batch(1, 64, seed=3).image)
    assert NSA().generate(paired, seed=0).image.shape == one.image.shape
    assert NSA(source="self").generate(one, seed=0).image.shape == one.image.shape


def test_mask_resize_rounds_ties_up_as_opencv():
    """Review fix: cv2.resize on a uint8 0/1 mask rounds an interpolated 0.5 up; torch's round went to even
    (0), which dropped object pixels on thin objects and ~3x as many patches as the official code
    (toy capsule, the toy object masks given to both: 1.13 % vs 0.34 % of drawn patches; now 0.30 %)."""
    cv2 = pytest.importorskip("cv2")
    m = np.zeros((8, 8), np.uint8)
    m[:, 3] = 1  # a one-pixel line: halving the width interpolates it to exactly 0.5
    ours = _resize_u8(torch.from_numpy(m)[None].float(), (8, 4))[0].numpy().astype(np.uint8)
    theirs = cv2.resize(m, (4, 8))
    assert theirs.sum() > 0 and np.array_equal(ours, theirs)
    rng = np.random.default_rng(0)
    for src in [(40, 40), (23, 57)]:
        rnd = (rng.random(src) > 0.6).astype(np.uint8)
        img = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        for size in [(20, 20), (57, 31), (13, 64), (2 * src[0], 3 * src[1])]:
            ours = _resize_u8(torch.from_numpy(rnd)[None].float(), size)[0].numpy().astype(np.uint8)
            assert (ours != cv2.resize(rnd, size[::-1])).mean() < 0.02, (src, size)
            ours = _resize_u8(torch.from_numpy(img).permute(2, 0, 1).float(), size).permute(1, 2, 0).numpy()
            diff = np.abs(ours.astype(int) - cv2.resize(img, size[::-1]).astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (src, size)
