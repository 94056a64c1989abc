"""CutPaste generators: the conformance kit, then the distributions that define the method.

Fidelity tests use Kolmogorov–Smirnov on 2,000 draws at fixed seeds; the threshold is the
α = 0.001 critical value of the one-sample KS statistic, 1.95 / sqrt(n) ≈ 0.0436.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from anoplug_cutpaste.cutpaste import CutPaste, CutPaste3Way, CutPasteScar
from anoplug_cutpaste.jitter import color_jitter
from scipy import stats

from anoplug.params import ParamError
from anoplug.testing import GeneratorConformance, make_toy_batch
from anoplug.types import Batch

N_DRAWS = 2000
KS_CRIT = 1.95 / math.sqrt(N_DRAWS)  # α = 0.001


class TestCutPasteConformance(GeneratorConformance):
    generator_name = "cutpaste"
    bad_params = {"area_min": 0.0, "jitter": 0.9, "aspect_ratio": 2.0}
    entry_module = "anoplug_cutpaste.plugin"


class TestScarConformance(GeneratorConformance):
    generator_name = "cutpaste-scar"
    bad_params = {"rotation": 200.0, "width_min": 0.1}
    entry_module = "anoplug_cutpaste.plugin"


class TestThreeWayConformance(GeneratorConformance):
    generator_name = "cutpaste-3way"
    batch_size = 6
    bad_params = {"area_max": 1.5, "length_max": 0.0}
    entry_module = "anoplug_cutpaste.plugin"


class TestEffectiveObjectAwareConformance(GeneratorConformance):
    generator_class = CutPaste3Way
    params = {"mask_mode": "effective", "object_aware": True}
    batch_size = 6


def _draws(gen, n: int = N_DRAWS, size: int = 256, seed: int = 0) -> list[dict]:
    rngs = [torch.Generator().manual_seed(seed * 100_000 + i) for i in range(n)]
    return gen.sample(make_toy_batch(1, size), rngs)


def _ks_uniform(x, lo: float, hi: float) -> float:
    return float(stats.kstest(np.asarray(x), stats.uniform(lo, hi - lo).cdf).statistic)


def test_area_ratio_follows_uniform_002_015() -> None:
    s = _draws(CutPaste())
    d_draw = _ks_uniform([d["area_draw"] for d in s], 0.02, 0.15)
    d_real = _ks_uniform([d["area_ratio"] for d in s], 0.02, 0.15)  # after rounding to whole pixels
    print(f"KS area: draw {d_draw:.4f}, realised {d_real:.4f}, threshold {KS_CRIT:.4f}")
    assert d_draw < KS_CRIT and d_real < KS_CRIT


def test_aspect_ratio_is_log_uniform_03_333() -> None:
    s = _draws(CutPaste(), seed=1)
    lo, hi = math.log(0.3), math.log(1 / 0.3)
    d_draw = _ks_uniform([math.log(d["aspect_draw"]) for d in s], lo, hi)
    d_real = _ks_uniform([math.log(d["w"] / d["h"]) for d in s], lo, hi)
    print(f"KS log-aspect: draw {d_draw:.4f}, realised {d_real:.4f}, threshold {KS_CRIT:.4f}")
    assert d_draw < KS_CRIT and d_real < KS_CRIT


def test_scar_size_and_angle() -> None:
    s = _draws(CutPasteScar(), seed=2)
    d_w = _ks_uniform([d["width_draw"] for d in s], 2, 16)
    d_l = _ks_uniform([d["length_draw"] for d in s], 10, 25)
    d_a = _ks_uniform([d["angle"] for d in s], -45, 45)
    print(f"KS scar: width {d_w:.4f}, length {d_l:.4f}, angle {d_a:.4f}, threshold {KS_CRIT:.4f}")
    assert max(d_w, d_l, d_a) < KS_CRIT
    assert all(d["w"] == max(1, round(d["width_draw"])) and d["h"] == max(1, round(d["length_draw"])) for d in s)
    at512 = _draws(CutPasteScar(), n=200, size=512, seed=2)  # sizes scale with the image side
    assert all(d["w"] == max(1, round(2 * d["width_draw"])) for d in at512)


def _coverage(gen, n: int, size: int, seed: int, chunk: int = 250) -> tuple[np.ndarray, list[dict]]:
    cov, samples = [], []
    g = torch.Generator().manual_seed(7)
    b = Batch(image=torch.randint(0, 256, (chunk, 3, size, size), generator=g).float() / 255)  # built once, reused
    for start in range(0, n, chunk):
        out = gen.generate(b, seeds=list(range(seed + start, seed + start + chunk)))
        cov.append(out.mask.flatten(1).mean(1).numpy())
        samples += [m["sample"] for m in out.meta]
    return np.concatenate(cov), samples


def test_cutpaste_mask_coverage_is_the_area_law() -> None:
    cov, _ = _coverage(CutPaste(), N_DRAWS, 128, seed=10)
    d = _ks_uniform(cov, 0.02, 0.15)
    print(f"KS cutpaste mask coverage at 128²: {d:.4f}, threshold {KS_CRIT:.4f}")
    assert d < KS_CRIT


def test_scar_mask_coverage_and_orientation() -> None:
    cov, samples = _coverage(CutPasteScar(), N_DRAWS, 128, seed=20)
    rng = np.random.default_rng(0)  # the law at 128²: round(U(2,16)/2) × round(U(10,25)/2) pixels, rotated
    law = np.maximum(1, np.round(rng.uniform(1, 8, 20_000))) * np.round(rng.uniform(5, 12.5, 20_000)) / 128**2
    d = float(stats.ks_2samp(cov, law).statistic)
    crit = 1.95 * math.sqrt((len(cov) + len(law)) / (len(cov) * len(law)))
    print(f"KS scar mask coverage vs law: {d:.4f}, threshold {crit:.4f}")
    assert d < crit


def test_scar_mask_is_the_rotated_footprint() -> None:
    b = make_toy_batch(64, 256, seed=3)
    out = CutPasteScar(width_min=3, width_max=4, length_min=24, length_max=25).generate(b, seed=5)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    est, drawn = [], []
    for i in range(64):
        m = out.mask[i, 0]
        w = m / m.sum()
        cy, cx = (w * yy).sum(), (w * xx).sum()
        myy, mxx, mxy = (w * (yy - cy) ** 2).sum(), (w * (xx - cx) ** 2).sum(), (w * (yy - cy) * (xx - cx)).sum()
        axis = 0.5 * math.atan2(2 * float(mxy), float(mxx - myy))  # long axis vs the x axis
        est.append(math.degrees(axis))
        drawn.append(out.meta[i]["sample"]["angle"])
    # the strip is vertical before rotation; θ counter-clockwise on screen (y down) puts its long axis at 90° - θ
    err = [((e - (90 - d)) + 90) % 180 - 90 for e, d in zip(est, drawn)]
    assert max(abs(x) for x in err) < 6.0, err


def test_three_way_classes_are_balanced() -> None:
    s = _draws(CutPaste3Way(), seed=3)
    counts = [sum(d["kind"] == k for d in s) for k in ("good", "cutpaste", "scar")]
    p = stats.chisquare(counts).pvalue
    assert p > 0.001, counts
    assert all(d["class_index"] == ("good", "cutpaste", "scar").index(d["kind"]) for d in s)


def test_paste_without_jitter_copies_the_source_box() -> None:
    b = make_toy_batch(4, 64)
    out = CutPaste(jitter=0.0).generate(b, seed=1)
    for i in range(4):
        s = out.meta[i]["sample"]
        (sy, sx), (dy, dx), h, w = s["src"], s["dst"], s["h"], s["w"]
        assert torch.equal(out.image[i, :, dy:dy + h, dx:dx + w], b.image[i, :, sy:sy + h, sx:sx + w])
        assert int(out.mask[i].sum()) == h * w and bool(out.mask[i, 0, dy:dy + h, dx:dx + w].all())


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_jitter_matches_torchvision(op: str) -> None:
    from torchvision.transforms.v2 import functional as F

    b = make_toy_batch(2, 24, seed=4).image
    factors = torch.tensor([[1.08, 0.93, 1.07, 0.07], [0.91, 1.09, 0.92, -0.06]], dtype=torch.float64)
    k = ("brightness", "contrast", "saturation", "hue").index(op)
    order = torch.tensor([[k, *[j for j in range(4) if j != k]]] * 2)
    ident = factors.clone()
    ident[:, :3], ident[:, 3] = 1.0, 0.0
    ident[:, k] = factors[:, k]  # only the op under test does anything
    flat = b.permute(1, 0, 2, 3).reshape(3, -1)  # [3, N]: sample 0's pixels, then sample 1's
    ours = color_jitter(flat, torch.tensor([24 * 24] * 2), ident.float(), order).reshape(3, 2, 24, 24).transpose(0, 1)
    fn = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast,
          "saturation": F.adjust_saturation, "hue": F.adjust_hue}[op]
    ref = torch.stack([fn(b[i], float(factors[i, k])) for i in range(2)])
    assert (ours - ref).abs().max() < 2e-5


def test_jitter_of_many_patches_in_their_own_orders_matches_torchvision() -> None:
    """Patches of different sizes and operation orders in one buffer = each jittered alone, in its order."""
    from torchvision.transforms.v2 import functional as F

    g = torch.Generator().manual_seed(3)
    sides = [5, 9, 3, 12, 7, 8, 6, 10]
    patches = [torch.rand(3, s, s, generator=g) for s in sides]
    factors = torch.stack([torch.rand(4, generator=g) * 0.2 + torch.tensor([0.9, 0.9, 0.9, -0.1]) for _ in sides])
    factors[2, 3] = 0.0  # a zero hue shift next to non-zero ones
    order = torch.stack([torch.randperm(4, generator=g) for _ in sides])
    flat = torch.cat([p.reshape(3, -1) for p in patches], 1)
    ours = color_jitter(flat.clone(), torch.tensor([s * s for s in sides]), factors, order)
    fns = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    a = 0
    for i, (p, s) in enumerate(zip(patches, sides)):
        ref = p
        for k in order[i].tolist():
            ref = fns[k](ref, float(factors[i, k]))
        assert (ours[:, a:a + s * s].reshape(3, s, s) - ref).abs().max() < 2e-5, i
        a += s * s


def test_object_aware_keeps_centres_on_the_object() -> None:
    b = make_toy_batch(16, 64)
    out = CutPaste(object_aware=True).generate(b, seed=2)
    for i in range(16):
        s = out.meta[i]["sample"]
        (dy, dx), (bh, bw) = s["dst"], s["box"]
        assert b.object_mask[i, 0, dy + bh // 2, dx + bw // 2] == 1


def test_effective_mask_marks_only_real_change() -> None:
    b = make_toy_batch(8, 64)
    geo = CutPaste().generate(b, seed=3)
    eff = CutPaste(mask_mode="effective").generate(b, seed=3)
    assert bool((eff.mask <= geo.mask).all())
    change = (eff.image - b.image).abs().mean(1, keepdim=True) * 255
    assert bool((change[eff.mask.bool()] > 1.0).all()) and bool((change[~eff.mask.bool()] == 0).all())


def test_scar_size_validation_names_the_field() -> None:
    with pytest.raises(ParamError, match="width_min"):
        CutPasteScar(width_min=10, width_max=5)
