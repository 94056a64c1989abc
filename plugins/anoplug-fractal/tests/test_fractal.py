"""Fractal (FractalAD's FAG, as ASBench runs it): the conformance kit and the defining laws.

Every law is re-expressed here independently (numpy loops, PIL, torchvision's PIL path,
OpenCV) and compared exactly or with Kolmogorov–Smirnov / binomial / χ² tests at α = 0.001
on a few thousand draws. Side-by-side runs of the official code need ``ASBENCH_SRC`` = a
checkout of M-3LAB/ASBench (``DRAEM/fractals/ifs.py`` and ``DRAEM/Fractal_Aug.py`` are read
from it, numba replaced by a pass-through decorator); they are skipped without it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from anoplug_fractal import geometry, ifs
from anoplug_fractal.fractal import Fractal
from anoplug_fractal.jitter import change_color, jitter
from PIL import Image
from scipy import stats

from anoplug.params import ParamError
from anoplug.testing import GeneratorConformance, make_toy_batch

ALPHA = 1e-3
FAST = {"probability": 1.0, "iterations": 2000}


class TestFractalConformance(GeneratorConformance):
    generator_name = "fractal"
    params = FAST
    bad_params = {"probability": 1.5, "size_max": 1.5, "dilation": -1, "maps": 0}
    entry_module = "anoplug_fractal.plugin"


class TestFractalFindObjectConformance(GeneratorConformance):
    generator_class = Fractal
    params = {**FAST, "find_object": True, "global_jitter": 0.0}


# -- re-expressions of the official laws, written for the tests ---------------------------------------
def np_sample_system(rng: np.random.Generator, n: int = 2) -> np.ndarray:
    """``sample_system(n)`` of fractals/ifs.py: A = U·diag(σ)·V, Σ(σ₁ + 2σ₂) = a ~ U((5+n)/2, (6+n)/2), t ~ U(−1, 1)."""
    base = np.sign(rng.random((2 * n, 2, 1)) - 0.5) * np.eye(2)
    ang = rng.uniform(-np.pi, np.pi, 2 * n)
    rot = np.stack([np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2)
    uv = rot @ base
    a = rng.uniform((5 + n) / 2, (6 + n) / 2)
    s = np.empty((n, 2))
    p, q = a, a - 3 * n + 3
    for i in range(n - 1):
        s1 = rng.uniform(max(0, q / 3), min(1, p))
        q, p = q - s1, p - s1
        s2 = rng.uniform(max(0, q / 2), min(s1, p / 2))
        q, p = q - 2 * s2 + 3, p - 2 * s2
        s[i] = s1, s2
    s2 = rng.uniform(max(0, (p - 1) / 2), p / 3)
    s[-1] = p - 2 * s2, s2
    m = np.empty((n, 2, 3))
    m[:, :, :2] = (uv[:n] * s[:, None, :]) @ uv[n:]
    m[:, :, 2] = rng.uniform(-1, 1, (n, 2))
    return m


def np_chaos(system: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The chaos game as a plain loop: start at map 0's fixed point, pick maps ∝ |det| by ``u``."""
    det = system[:, 0, 0] * system[:, 1, 1] - system[:, 0, 1] * system[:, 1, 0]
    cum = np.cumsum(np.abs(det) / np.abs(det).sum())
    (a, b, e), (c, d, f) = system[0]
    x, y = np.linalg.solve(np.eye(2) - system[0, :, :2], system[0, :, 2])
    out = np.empty((len(u), 2))
    for i, r in enumerate(u):
        k = next((j for j in range(len(cum)) if r < cum[j]), len(cum) - 1)
        (a, b, e), (c, d, f) = system[k]
        x, y = a * x + b * y + e, c * x + d * y + f
        out[i] = x, y
    return out


def np_render(points: np.ndarray, s: int, stamp: list[bool]) -> np.ndarray:
    lo, hi = points.min(0), points.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    img = np.zeros((s, s), bool)
    rc = ((points - lo) * ((s - 1) / span)).astype(int)
    for k, keep in enumerate(stamp):
        if keep:
            r, c = rc[:, 0] + k // 3 - 1, rc[:, 1] + k % 3 - 1
            ok = (r >= 0) & (r < s) & (c >= 0) & (c < s)
            img[r[ok], c[ok]] = True
    return img


def _draws(n: int, size: int = 256, **params) -> list[dict]:
    g = Fractal(**{"probability": 0.5, **params})
    return g.sample(make_toy_batch(1, size), [torch.Generator().manual_seed(1000 + i) for i in range(n)])


@pytest.fixture(scope="module")
def draws() -> list[dict]:
    return _draws(2000)


# -- the sampling laws ----------------------------------------------------------------------------------
def test_anomaly_share_flips_noise_and_colour_choice(draws) -> None:
    n = len(draws)
    for key in ("anomalous", "flip_lr", "flip_tb", "noise"):
        assert stats.binomtest(sum(d[key] for d in draws), n, 0.5).pvalue > ALPHA, key
    modes = [sum(d["jitter_mode"] == m for d in draws) for m in ("color", "brightness-contrast", "channels")]
    assert stats.chisquare(modes).pvalue > ALPHA, modes  # torchvision RandomChoice: ⅓ each


def test_patch_size_positions_and_rotation(draws) -> None:
    rng = np.random.default_rng(0)
    cuts = np.array([d["cut"] for d in draws])
    ref = np.array([int(rng.uniform(25.6, 128)) for _ in range(20000)])  # int(U(0.1·256, 0.5·256))
    assert stats.kstest(cuts, ref).pvalue > ALPHA
    for key in ("src", "dst"):
        for axis in (0, 1):
            pos = np.array([d[key][axis] for d in draws])
            ref = np.array([int(rng.uniform(25.6, 230.4 - c)) for c in cuts])  # int(U(0.1·H, 0.9·H − c))
            assert stats.kstest(pos, ref).pvalue > ALPHA, (key, axis)
            assert (pos >= 25).all() and (pos + cuts <= 231).all()
    rho = stats.spearmanr([d["src"][0] for d in draws], [d["dst"][0] for d in draws]).statistic
    assert abs(rho) < 0.1  # source and destination drawn independently
    assert stats.kstest([d["angle"] for d in draws], stats.uniform(15, 60).cdf).pvalue > ALPHA


def test_colour_jitter_laws(draws) -> None:
    by = {m: [d for d in draws if d["jitter_mode"] == m] for m in ("color", "brightness-contrast", "channels")}
    f = np.array([d["jitter"]["factors"] for d in by["color"]])
    for k in range(3):
        assert stats.kstest(f[:, k], stats.uniform(0.8, 0.4).cdf).pvalue > ALPHA
    assert stats.kstest(f[:, 3], stats.uniform(-0.2, 0.4).cdf).pvalue > ALPHA
    f = np.array([d["jitter"]["factors"] for d in by["brightness-contrast"]])
    for k in range(2):  # ColorJitter(brightness=1, contrast=1): U(0, 2)
        assert stats.kstest(f[:, k], stats.uniform(0, 2).cdf).pvalue > ALPHA
    first = np.bincount([d["jitter"]["order"][0] for d in by["color"]], minlength=4)
    assert stats.chisquare(first).pvalue > ALPHA  # randperm(4)
    ch = np.bincount([c for d in by["channels"] for c in d["channels"]], minlength=3)
    assert stats.chisquare(ch).pvalue > ALPHA
    r = [v for d in by["channels"] for v in d["channel_draws"]]
    assert stats.kstest(r, stats.uniform(0, 1).cdf).pvalue > ALPHA
    g = np.array([d["global_jitter"]["factors"] for d in draws])
    assert stats.kstest(g[:, 0], stats.uniform(0.95, 0.1).cdf).pvalue > ALPHA
    assert stats.kstest(g[:, 3], stats.uniform(-0.05, 0.1).cdf).pvalue > ALPHA


def test_ifs_system_law(draws) -> None:
    """Singular values of each map sum to a ~ U(3.5, 4) (σ₁ + 2σ₂); |det| and translations as the re-expressed law."""
    sys_ = torch.stack([d["system"] for d in draws]).numpy()  # [n, 2, 2, 3]
    sv = np.linalg.svd(sys_[:, :, :, :2], compute_uv=False)  # [n, 2 maps, 2]
    assert (sv <= 1 + 1e-12).all()
    a = (sv[..., 0] + 2 * sv[..., 1]).sum(1)
    assert stats.kstest(a, stats.uniform(3.5, 0.5).cdf).pvalue > ALPHA
    rng = np.random.default_rng(1)
    ref = np.stack([np_sample_system(rng) for _ in range(4000)])
    ref_sv = np.linalg.svd(ref[:, :, :, :2], compute_uv=False)
    assert stats.kstest(sv[:, 0, 0], ref_sv[:, 0, 0]).pvalue > ALPHA
    assert stats.kstest(sv[:, 1, 1], ref_sv[:, 1, 1]).pvalue > ALPHA
    det = np.abs(np.linalg.det(sys_[:, 0, :, :2]))
    assert stats.kstest(det, np.abs(np.linalg.det(ref[:, 0, :, :2]))).pvalue > ALPHA
    assert stats.kstest(sys_[:, :, :, 2].ravel(), stats.uniform(-1, 2).cdf).pvalue > ALPHA
    stamp = np.array([d["stamp"] for d in draws])
    assert stats.binomtest(int(stamp.sum()), stamp.size, 0.5).pvalue > ALPHA  # each 3×3 offset kept with ½


def test_chaos_game_is_the_sequential_recurrence() -> None:
    rng = np.random.default_rng(2)
    systems = [np_sample_system(rng, 2), np_sample_system(rng, 3), np_sample_system(rng, 2)]
    u = rng.random((3, 2500))
    ours = ifs.chaos_game([torch.from_numpy(s) for s in systems], torch.from_numpy(u)).numpy()
    for i, s in enumerate(systems):
        assert np.abs(ours[i] - np_chaos(s, u[i])).max() < 1e-10


def test_render_matches_a_pointwise_loop() -> None:
    rng = np.random.default_rng(3)
    for s in (1, 7, 64):
        pts = np_chaos(np_sample_system(rng), rng.random(3000))
        stamp = list(rng.random(9) < 0.5)
        assert np.array_equal(ifs.render_binary(torch.from_numpy(pts), s, stamp).numpy(), np_render(pts, s, stamp))


def test_rotation_is_pils_rgba_rotate() -> None:
    rng = np.random.default_rng(4)
    for _ in range(40):
        s, deg = int(rng.integers(2, 90)), float(rng.uniform(-80, 80))
        a = rng.integers(1, 256, (s, s, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a).convert("RGBA").rotate(deg, expand=False))
        rot, inside = geometry.rotate_square(torch.from_numpy(a).permute(2, 0, 1), deg)
        assert np.array_equal(inside.numpy(), ref[..., 3] == 255)
        assert np.array_equal(rot.permute(1, 2, 0).numpy(), ref[..., :3])


def test_dilation_is_opencvs() -> None:
    m = (torch.rand(1, 1, 40, 50, generator=torch.Generator().manual_seed(0)) > 0.97).float()
    for k in (1, 3):
        ref = cv2.dilate(m[0, 0].numpy().astype(np.uint8), np.ones((3, 3), np.uint8), iterations=k)
        assert np.array_equal(geometry.dilate(m, k)[0, 0].numpy().astype(np.uint8), ref)


def test_jitter_equals_torchvision_on_pil() -> None:
    rng = np.random.default_rng(5)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for _ in range(12):
        a = rng.integers(0, 256, (23, 19, 3), dtype=np.uint8)
        order = rng.permutation(4)
        fac = [float(rng.uniform(0, 2)), float(rng.uniform(0, 2)), float(rng.uniform(0, 2)), float(rng.uniform(-0.5, 0.5))]
        ref = Image.fromarray(a)
        for op in order:
            ref = fns[op](ref, fac[op])
        x = torch.from_numpy(a).permute(2, 0, 1)[None].double()
        y = jitter(x, torch.tensor([fac], dtype=torch.float64), torch.from_numpy(order)[None], (True,) * 4)
        assert np.array_equal(y[0].permute(1, 2, 0).numpy().astype(np.uint8), np.asarray(ref))
        ch, r = [int(v) for v in rng.integers(0, 3, 2)], [float(v) for v in rng.random(2)]
        chs = [a[..., c].copy() for c in range(3)]
        for c, v in zip(ch, r):
            chs[c] = np.uint8(chs[c] * v * 2)  # the official cast: truncation, wrapping
        got = change_color(torch.from_numpy(a).permute(2, 0, 1).double(), ch, r).permute(1, 2, 0).numpy()
        assert np.array_equal(got.astype(np.uint8), np.stack(chs, -1))


# -- the whole mechanism against a PIL / OpenCV re-expression of FAG.__call__ ------------------------------
def _reference(img: np.ndarray, rec: dict, p) -> tuple[np.ndarray, np.ndarray]:
    """FAG.__call__ at the recorded draws, with PIL, torchvision's PIL path and OpenCV (uint8 H×W×3)."""
    pil = Image.fromarray(img)
    c, (fy, fx), (ty, tx) = rec["cut"], rec["src"], rec["dst"]
    patch = pil.crop([fx, fy, fx + c, fy + c])
    if rec["jitter_mode"] == "channels":
        chs = [np.array(ch) for ch in patch.split()]
        for k, r in zip(rec["channels"], rec["channel_draws"]):
            chs[k] = np.uint8(chs[k] * r * 2)
        patch = Image.merge("RGB", [Image.fromarray(ch) for ch in chs])
    else:
        fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op in rec["jitter"]["order"]:
            if rec["jitter_mode"] == "color" or op < 2:
                patch = fns[op](patch, rec["jitter"]["factors"][op])
    if rec["flip_lr"]:
        patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
    if rec["flip_tb"]:
        patch = patch.transpose(Image.FLIP_TOP_BOTTOM)
    patch = patch.convert("RGBA").rotate(rec["angle"], expand=False)
    u = torch.rand(p.iterations, dtype=torch.float64, generator=torch.Generator().manual_seed(rec["chaos_seed"]))
    fractal = np_render(np_chaos(rec["system"].numpy(), u.numpy()), c, rec["stamp"])
    mask = Image.fromarray(np.asarray(patch)[..., 3] * fractal.astype(np.uint8))
    aug = pil.copy()
    aug.paste(patch.convert("RGB"), (tx, ty), mask=mask)
    msk = Image.new("L", pil.size)
    msk.paste(Image.new("L", (c, c), 255), (tx, ty), mask=mask)
    msk = cv2.dilate(np.array(msk), np.ones((3, 3), np.uint8), iterations=3)
    out = np.array(aug)
    if rec["noise"]:
        n = p.noise_amplitude * torch.randn(*img.shape[:2], dtype=torch.float64,
                                            generator=torch.Generator().manual_seed(rec["noise_seed"])).numpy()
        tmp = np.clip(out + n[..., None], 0, 255)
        m3 = np.repeat(msk[..., None], 3, 2)
        out = cv2.bitwise_and(out, 255 - m3) + cv2.bitwise_and(np.uint8(tmp), m3)
    out = Image.fromarray(out)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op in rec["global_jitter"]["order"]:
        out = fns[op](out, rec["global_jitter"]["factors"][op])
    return np.asarray(out), msk


@pytest.mark.parametrize("seed", [0, 1])
def test_every_step_equals_the_pil_reference(seed: int) -> None:
    """Cut, colour, flips, rotation, fractal mask, paste, dilation, noise and global jitter: bit-exact."""
    batch = make_toy_batch(6, 96, seed=seed)
    g = Fractal(probability=1.0, iterations=3000)
    out = g.generate(batch, seed=seed)
    modes = set()
    for i in range(len(batch)):
        rec = out.meta[i]["sample"]
        modes.add(rec["jitter_mode"])
        img = (batch.image[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        ref_img, ref_mask = _reference(img, rec, g.params)
        assert np.array_equal(out.mask[i, 0].numpy().astype(np.uint8) * 255, ref_mask), f"sample {i}: mask"
        got = (out.image[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(got, ref_img), f"sample {i}: image ({rec['jitter_mode']})"
    assert len(modes) >= 2


def test_global_jitter_is_asbench_only() -> None:
    batch = make_toy_batch(4, 64)
    asb = Fractal(**FAST).generate(batch, seed=0)
    fad = Fractal(**FAST, global_jitter=0.0).generate(batch, seed=0)
    outside = (fad.mask == 0).expand_as(batch.image)
    assert torch.equal(fad.image[outside], batch.image[outside])  # FractalAD's setting keeps the rest exactly
    changed = (asb.image - batch.image).abs()[(asb.mask == 0).expand_as(batch.image)]
    assert float((changed > 0).float().mean()) > 0.2  # ASBench's output-only jitter changes the whole image


def test_probability_zero_leaves_images_alone() -> None:
    batch = make_toy_batch(4, 64)
    out = Fractal(probability=0.0, iterations=500).generate(batch, seed=0)
    assert out.label == ["good"] * 4 and torch.equal(out.image, batch.image) and not out.mask.any()


def test_find_object_cuts_and_pastes_on_the_object() -> None:
    batch = make_toy_batch(1, 128)  # a disc of radius 0.35·128
    obj = batch.object_mask[0, 0].numpy()
    g = Fractal(probability=1.0, find_object=True)
    recs = [g.sample(batch, [torch.Generator().manual_seed(i)])[0] for i in range(600)]
    extent = geometry.object_extent((obj > 0.5).astype(np.uint8) * 255)
    assert 85 < extent < 95
    cuts = np.array([r["cut"] for r in recs])
    rng = np.random.default_rng(0)
    ref = np.minimum(np.maximum([int(rng.uniform(0.05 * extent, 1.5 * extent)) for _ in range(6000)], 1), 128)
    assert stats.kstest(cuts, ref).pvalue > ALPHA  # int(U(0.5·lb·e, 3·hb·e)), kept inside the image
    for r in recs:
        for y, x in (r["src"], r["dst"]):
            assert obj[y + r["cut"] // 2, x + r["cut"] // 2] > 0.5  # centres drawn until on the object


def test_find_object_without_a_mask_uses_fractalads_rule() -> None:
    from anoplug.data import toy

    batch = toy.render("capsule", "train", index=0, size=128)
    batch.object_mask = None
    img = (batch.image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    rule = geometry.object_rule_mask(img)
    assert 0.02 < (rule > 0).mean() < 0.5  # the capsule, not the background
    recs = [Fractal(probability=1.0, find_object=True).sample(batch, [torch.Generator().manual_seed(i)])[0]
            for i in range(50)]
    for r in recs:
        for y, x in (r["src"], r["dst"]):
            assert rule[y + r["cut"] // 2, x + r["cut"] // 2] > 0


def test_parameter_ranges_are_checked() -> None:
    with pytest.raises(ParamError, match="size_min"):
        Fractal(size_min=0.6, size_max=0.5)
    with pytest.raises(ParamError, match="region_max"):
        Fractal(region_min=0.4, region_max=0.6)


# -- side by side with the official code (ASBENCH_SRC) ------------------------------------------------------
ASBENCH = os.environ.get("ASBENCH_SRC", "")
needs_official = pytest.mark.skipif(not Path(ASBENCH, "DRAEM", "fractals", "ifs.py").is_file(),
                                    reason="set ASBENCH_SRC to a checkout of M-3LAB/ASBench to run the official code")


@pytest.fixture(scope="module")
def official():
    """The official ``fractals.ifs`` and ``Fractal_Aug`` modules, numba replaced by a pass-through."""
    saved = {k: sys.modules.get(k) for k in ("numba", "fractals", "fractals.ifs")}
    numba = types.ModuleType("numba")
    numba.njit = lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f)
    sys.modules["numba"] = numba
    root = Path(ASBENCH, "DRAEM")
    spec = importlib.util.spec_from_file_location("fractals.ifs", root / "fractals" / "ifs.py")
    off_ifs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(off_ifs)
    pkg = types.ModuleType("fractals")
    pkg.ifs = off_ifs
    sys.modules["fractals"], sys.modules["fractals.ifs"] = pkg, off_ifs
    spec = importlib.util.spec_from_file_location("asbench_fractal_aug", root / "Fractal_Aug.py")
    fag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fag)
    yield types.SimpleNamespace(ifs=off_ifs, fag=fag)
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


@needs_official
def test_official_system_law_side_by_side(official) -> None:
    rng = np.random.default_rng(7)
    theirs = np.stack([official.ifs.sample_system(2, rng=rng) for _ in range(3000)])
    ours = torch.stack([ifs.sample_system(torch.Generator().manual_seed(i)) for i in range(3000)]).numpy()
    for f in (lambda s: np.abs(np.linalg.det(s[:, 0, :, :2])), lambda s: s[:, 1, 0, 2],
              lambda s: np.linalg.svd(s[:, 0, :, :2], compute_uv=False)[:, 0]):
        assert stats.kstest(f(ours), f(theirs)).pvalue > ALPHA


@needs_official
def test_official_iterate_and_render_side_by_side(official) -> None:
    system = official.ifs.sample_system(2, rng=np.random.default_rng(8))
    np.random.seed(3)
    pts = official.ifs.iterate(system, 4000)
    np.random.seed(3)
    u = np.random.rand(4000)  # the draws the official loop made, one per step
    ours = ifs.chaos_game([torch.from_numpy(system)], torch.from_numpy(u)[None])[0]
    assert np.abs(ours.numpy() - pts).max() < 1e-10
    np.random.seed(4)
    img = official.ifs.render(pts, s=61, binary=True, patch=True)
    np.random.seed(4)
    stamp = list(np.random.randint(0, 2, (9,), dtype=bool))  # the official render's 3×3 patch draw
    assert np.array_equal(ifs.render_binary(torch.from_numpy(pts), 61, stamp).numpy(), img.astype(bool))


@needs_official
def test_official_fag_mask_area_side_by_side(official, monkeypatch) -> None:
    """FAG.__call__ at 256² (its chaos loop swapped for ours, checked above) vs ours: the label-mask area law."""
    def fast_iterate(system, n_iter, ps=None):
        u = torch.from_numpy(np.random.rand(n_iter))[None]
        return ifs.chaos_game([torch.from_numpy(system)], u)[0].numpy()

    monkeypatch.setattr(official.ifs, "iterate", fast_iterate)
    monkeypatch.setattr(Image, "ANTIALIAS", Image.LANCZOS, raising=False)  # removed in Pillow 10
    seed_torch = torch.manual_seed  # FAG seeds torch with a 1-element array, which numpy 2 no longer converts
    monkeypatch.setattr(torch, "manual_seed", lambda s: seed_torch(int(np.asarray(s).reshape(-1)[0])))
    img = (make_toy_batch(1, 256).image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.random.seed(0)
    import random

    random.seed(0)
    torch.manual_seed(0)
    fag = official.fag.FAG(load_size=256)
    theirs = [float((fag(img)[1] > 0).mean()) for _ in range(80)]
    g = Fractal(probability=1.0)
    batch = make_toy_batch(1, 256)[[0] * 40]
    ours = [float(m) for k in range(4) for m in g.generate(batch, seeds=range(40 * k, 40 * k + 40)).mask.mean((1, 2, 3))]
    assert stats.kstest(ours, theirs).pvalue > ALPHA, (np.mean(ours), np.mean(theirs))


@needs_official
def test_official_object_rule_side_by_side(official) -> None:
    fag = official.fag.FAG(load_size=256, is_findobj=True)
    for seed in range(3):
        img = (make_toy_batch(1, 256, seed=seed).image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        obj, rect = fag.OBJ_mask(img)
        assert np.array_equal(geometry.object_rule_mask(img), obj)
        assert math.isclose(geometry.object_extent(geometry.object_rule_mask(img)), min(rect))
