"""MemSeg's abnormal synthesis: the conformance kit and the defining laws.

Each law is re-expressed here independently (OpenCV's grey threshold, the reference's einops
tiling, the blend formula in numpy) and compared exactly, or with KS / binomial / χ² tests at
α = 0.001 on a few thousand draws. Side-by-side runs of the reference code need ``ASBENCH_SRC``
= a checkout of M-3LAB/ASBench: the methods of ``MemSegDataset`` are read from
``MemSeg/data/dataset.py`` (the module itself imports imgaug and the other synthesisers, so only
the methods are compiled) and ``MemSeg/data/perlin.py`` is imported; skipped without it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from anoplug_memseg.memseg import ASBENCH_PIPELINES, MVTEC_FOREGROUND, Memseg, foreground_rule, mvtec_params, shuffle_grid
from einops import rearrange
from scipy import stats

from anoplug.data.textures import texture_source
from anoplug.noise import perlin_masks
from anoplug.testing import GeneratorConformance, make_toy_batch
from anoplug.types import BatchError

ALPHA = 1e-3


class TestMemsegConformance(GeneratorConformance):
    generator_name = "memseg"
    params = {"probability": 1.0}
    bad_params = {"probability": 1.5, "transparency_max": 1.2, "bg_threshold": 300, "structure_grid": 0}
    entry_module = "anoplug_memseg.plugin"


class TestMemsegStructureThresholdConformance(GeneratorConformance):
    generator_class = Memseg
    params = {"probability": 1.0, "texture_source": "none", "foreground": "threshold", "bg_threshold": 200}


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def draws() -> list[dict]:
    g = Memseg()
    return g.sample(make_toy_batch(1, 64), [torch.Generator().manual_seed(500 + i) for i in range(2000)])


# -- the sampling laws -------------------------------------------------------------------------------------
def test_sampling_laws(draws) -> None:
    n = len(draws)
    assert stats.binomtest(sum(d["anomalous"] for d in draws), n, 0.5).pvalue > ALPHA  # ASBench percent
    assert stats.binomtest(sum(d["source"] == "texture" for d in draws), n, 0.5).pvalue > ALPHA  # p < 0.5
    assert stats.kstest([d["opacity"] for d in draws], stats.uniform(0.15, 0.85).cdf).pvalue > ALPHA
    assert stats.kstest([d["angle"] for d in draws], stats.uniform(-90, 180).cdf).pvalue > ALPHA
    exps = np.log2([s for d in draws for s in d["scales"]]).astype(int)
    assert stats.chisquare(np.bincount(exps, minlength=6)).pvalue > ALPHA  # 2**randint(0, 6) per axis
    struct = [d for d in draws if d["source"] == "structure"]
    where0 = np.bincount([d["permutation"].index(0) for d in struct], minlength=64)
    assert stats.chisquare(where0).pvalue > ALPHA  # tile 0 goes anywhere: a uniform shuffle of 8×8
    assert all(sorted(d["permutation"]) == list(range(64)) for d in struct)
    chains = [[a for a, _ in d["augmenters"]] for d in struct]
    assert all(len(c) == 3 and len(set(c)) == 3 for c in chains)  # 3 of 10, without replacement
    from anoplug.augment import NAMES

    first = np.bincount([NAMES.index(c[0]) for c in chains], minlength=10)
    assert stats.chisquare(first).pvalue > ALPHA


def test_no_texture_source_means_structure_only() -> None:
    recs = Memseg(texture_source="none").sample(make_toy_batch(1, 32), [torch.Generator().manual_seed(i) for i in range(50)])
    assert {r["source"] for r in recs} == {"structure"}


# -- the steps, each against an independent re-expression ---------------------------------------------------
@pytest.mark.parametrize(("threshold", "reverse"), [(100, False), (50, True), (250, False), (0, True)])
def test_foreground_rule_is_opencvs_threshold(threshold: int, reverse: bool) -> None:
    rng = np.random.default_rng(threshold)
    img = rng.integers(0, 256, (3, 40, 52, 3), dtype=np.uint8)
    ours = foreground_rule(torch.from_numpy(img).permute(0, 3, 1, 2).double(), threshold, reverse)
    for i in range(3):
        _, bg = cv2.threshold(cv2.cvtColor(img[i], cv2.COLOR_RGB2GRAY), threshold, 255, cv2.THRESH_BINARY)
        ref = (bg > 0) if reverse else (bg == 0)
        assert np.array_equal(ours[i, 0].numpy().astype(bool), ref)


def _official_tiling(img: np.ndarray, grid: int, perm: np.ndarray) -> np.ndarray:
    """``_structure_source``'s einops patterns, H×W×C."""
    gh, gw = img.shape[0] // grid, img.shape[1] // grid
    tiles = rearrange(img, "(h gh) (w gw) c -> (h w) gw gh c", gw=gw, gh=gh)
    return rearrange(tiles[perm], "(h w) gw gh c -> (h gh) (w gw) c", h=grid, w=grid)


@pytest.mark.parametrize(("h", "w", "grid"), [(64, 64, 8), (48, 80, 4), (30, 30, 1)])
def test_structure_grid_is_the_reference_tiling(h: int, w: int, grid: int) -> None:
    rng = np.random.default_rng(h + w)
    img = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    perms = np.stack([rng.permutation(grid * grid) for _ in range(2)])
    ours = shuffle_grid(torch.from_numpy(img).permute(0, 3, 1, 2), grid, torch.from_numpy(perms))
    for i in range(2):
        assert np.array_equal(ours[i].permute(1, 2, 0).numpy(), _official_tiling(img[i], grid, perms[i]))


def test_structure_grid_needs_divisible_sides() -> None:
    with pytest.raises(BatchError, match="structure_grid"):
        shuffle_grid(torch.zeros(1, 3, 30, 32), 8, torch.arange(64)[None])


def _perlin(recs: list[dict], size: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    return perlin_masks([r["gradients"] for r in recs], size, threshold, torch.tensor([r["angle"] for r in recs]))[1]


@pytest.mark.parametrize("foreground", ["auto", "threshold", "none"])
def test_mask_is_perlin_and_foreground(foreground: str) -> None:
    batch = make_toy_batch(6, 64, seed=2)
    out = Memseg(probability=1.0, foreground=foreground, bg_threshold=120).generate(batch, seed=1)
    recs = [m["sample"] for m in out.meta]
    perlin = _perlin(recs, (64, 64))
    if foreground == "auto":  # the toy batch has an object mask: it is the foreground
        fg = batch.object_mask
    elif foreground == "threshold":
        fg = torch.stack([torch.from_numpy(cv2.threshold(cv2.cvtColor(_u8(im), cv2.COLOR_RGB2GRAY), 120, 255,
                                                         cv2.THRESH_BINARY)[1] == 0) for im in batch.image])[:, None]
    else:
        fg = torch.ones_like(perlin)
    assert torch.equal(out.mask, perlin * fg.float())
    assert out.mask.any()
    if foreground != "none":
        assert out.mask.sum() < perlin.sum()  # the foreground removed part of the Perlin mask


@pytest.mark.parametrize("augment", [False, True])
def test_blend_law_with_the_structure_source(augment: bool) -> None:
    """Inside M: ⌊f·S + (1 − f)·I⌋ with S the (augmented) image tiled and shuffled; outside: the input, bit for bit."""
    from anoplug import augment as draem_augment

    batch = make_toy_batch(4, 64, seed=3)
    out = Memseg(probability=1.0, texture_source="none", foreground="none", structure_augment=augment).generate(batch, seed=2)
    for i in range(4):
        rec = out.meta[i]["sample"]
        img = _u8(batch.image[i])
        src = img
        if augment:
            t = torch.from_numpy(img).permute(2, 0, 1)[None].clone()  # apply_chains works in place
            src = draem_augment.apply_chains(t, [rec["augmenters"]])[0].permute(1, 2, 0).numpy()
        s = _official_tiling(src, 8, np.array(rec["permutation"])).astype(np.float32)
        f = np.float64(rec["opacity"])  # a numpy float64, as np.random.uniform(...)[0] in the reference
        m = out.mask[i, 0].numpy().astype(bool)
        expected = np.floor(f * s + (1 - f) * img)  # the reference: factor·(M·S) + (1 − factor)·(M·I), cast to uint8
        got = out.image[i].permute(1, 2, 0).numpy()
        assert np.array_equal(np.round(got[m] * 255), expected[m])
        assert np.array_equal(got[~m], batch.image[i].permute(1, 2, 0).numpy()[~m])


def test_blend_law_with_a_texture_source() -> None:
    batch = make_toy_batch(8, 64, seed=4)
    out = Memseg(probability=1.0, texture_probability=1.0, foreground="none", quantize=False).generate(batch, seed=3)
    tex = texture_source("skimage", size=(64, 64))
    for i in range(8):
        rec = out.meta[i]["sample"]
        assert rec["source"] == "texture"
        s = tex.get_uint8(rec["texture"]).permute(1, 2, 0).numpy().astype(np.float64)  # no augmentation
        f, img = rec["opacity"], _u8(batch.image[i]).astype(np.float64)
        m = out.mask[i, 0].numpy().astype(bool)
        got = out.image[i].permute(1, 2, 0).numpy().astype(np.float64) * 255
        if m.any():  # quantize=False: the blend itself
            assert np.abs(got[m] - (f * s + (1 - f) * img)[m]).max() < 1e-3


def test_mask_area_law_is_draems() -> None:
    """MemSeg's Perlin mask is DRAEM's (scales, rotation, threshold): same area distribution."""
    Draem = pytest.importorskip("anoplug_draem.draem", reason="the reference law is the DRAEM plugin's").Draem

    b = make_toy_batch(40, 64, seed=5)
    mem = torch.cat([Memseg(probability=1.0, foreground="none", texture_source="none").generate(b, seed=s).mask
                     for s in range(8)]).mean((1, 2, 3))
    dra = torch.cat([Draem(probability=1.0, texture_source="perlin").generate(b, seed=100 + s).mask
                     for s in range(8)]).mean((1, 2, 3))
    assert stats.kstest(mem.numpy(), dra.numpy()).pvalue > ALPHA
    no_rot = torch.cat([Memseg(probability=1.0, foreground="none", texture_source="none", rotation=0.0).generate(b, seed=s).mask
                        for s in range(8)]).mean((1, 2, 3))
    assert float(no_rot.mean()) > float(mem.mean())  # rotating with zero fill loses the corners (DRAEM's law)


def test_probability_and_empty_masks() -> None:
    batch = make_toy_batch(4, 64)
    out = Memseg(probability=0.0).generate(batch, seed=0)
    assert out.label == ["good"] * 4 and torch.equal(out.image, batch.image)
    out = Memseg(probability=1.0, threshold=1.0).generate(batch, seed=0)  # noise never exceeds 1: empty masks
    assert out.label == ["good"] * 4 and torch.equal(out.image, batch.image)


def test_object_mask_foreground_needs_one() -> None:
    b = make_toy_batch(2, 32)
    b.object_mask = None
    with pytest.raises(BatchError, match="object_mask"):
        Memseg(probability=1.0, foreground="object_mask").generate(b, seed=0)


@pytest.mark.parametrize("pipeline", sorted(ASBENCH_PIPELINES))
def test_asbench_pipeline_settings_build(pipeline: str) -> None:
    out = Memseg(probability=1.0, **ASBENCH_PIPELINES[pipeline]).generate(make_toy_batch(2, 64), seed=0)
    assert out.image.shape == (2, 3, 64, 64)


def test_mvtec_foreground_table() -> None:
    assert mvtec_params("leather") == {"foreground": "none"}
    assert mvtec_params("bottle") == {"foreground": "threshold", "bg_threshold": 250, "bg_reverse": False}
    assert mvtec_params("cable") == {"foreground": "none"}  # use_mask false despite a threshold in the table
    with pytest.raises(KeyError):
        mvtec_params("not-a-class")
    for cls in MVTEC_FOREGROUND:
        Memseg(**mvtec_params(cls))


# -- side by side with the reference code (ASBENCH_SRC) --------------------------------------------------------
ASBENCH = os.environ.get("ASBENCH_SRC", "")
needs_official = pytest.mark.skipif(not Path(ASBENCH, "MemSeg", "data", "dataset.py").is_file(),
                                    reason="set ASBENCH_SRC to a checkout of M-3LAB/ASBench to run the reference code")


@pytest.fixture(scope="module")
def official():
    """``MemSegDataset``'s synthesis methods compiled from the reference file (without its imports)."""
    path = Path(ASBENCH, "MemSeg", "data", "dataset.py")
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MemSegDataset")
    wanted = {"generate_anomaly", "generate_target_foreground_mask", "_structure_source", "anomaly_source"}
    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    shim = ast.Module(body=[ast.ClassDef(name="Reference", bases=[], keywords=[], body=methods, decorator_list=[])],
                      type_ignores=[])
    ns = {"np": np, "cv2": cv2, "torch": torch, "rearrange": rearrange, "List": list}
    exec(compile(ast.fix_missing_locations(shim), str(path), "exec"), ns)
    spec = importlib.util.spec_from_file_location("memseg_reference_perlin", Path(ASBENCH, "MemSeg", "data", "perlin.py"))
    perlin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(perlin)
    masks = json.loads(Path(ASBENCH, "MemSeg", "anomaly_mask.json").read_text())
    return ns["Reference"], perlin, masks


@needs_official
def test_reference_foreground_table_and_rule(official) -> None:
    ref_cls, _, masks = official
    assert {k: (v["use_mask"], v["bg_threshold"], v["bg_reverse"]) for k, v in masks.items()} == MVTEC_FOREGROUND
    for name, v in masks.items():
        thr, rev = v["bg_threshold"], v["bg_reverse"]
        if thr is None:
            continue
        ref = ref_cls()
        ref.bg_threshold, ref.bg_reverse = thr, rev
        img = _u8(make_toy_batch(1, 64, seed=len(name)).image[0])
        theirs = ref.generate_target_foreground_mask(img)
        ours = foreground_rule(torch.from_numpy(img).permute(2, 0, 1)[None].double(), thr, rev)[0, 0]
        assert np.array_equal(ours.numpy(), theirs.astype(np.float32)), name


@needs_official
def test_reference_generate_anomaly_side_by_side(official) -> None:
    """The reference blend and structure tiling on the same mask, permutation and opacity: the same bytes."""
    ref_cls, _, _ = official
    batch = make_toy_batch(3, 64, seed=6)
    g = Memseg(probability=1.0, texture_source="none", foreground="threshold", bg_threshold=140, structure_augment=False)
    out = g.generate(batch, seed=4)
    for i in range(3):
        rec = out.meta[i]["sample"]
        img = _u8(batch.image[i])
        perlin = _perlin([rec], (64, 64))[0, 0].numpy().astype(np.float64)
        ref = ref_cls()
        ref.use_mask, ref.bg_threshold, ref.bg_reverse = True, 140, False
        ref.resize, ref.structure_grid_size, ref.transparency_range = [64, 64], 8, [0.15, 1.0]
        ref.generate_perlin_noise_mask = lambda img_size, m=perlin: m
        ref.rand_augment = lambda: (lambda image: image)  # structure_augment=False
        perm = np.array(rec["permutation"])
        state: dict = {}

        def shuffle(a, perm=perm):  # the reference's np.random.shuffle, fed our permutation
            a[:] = perm

        def uniform(lo, hi, size=None, f=rec["opacity"], state=state):  # the reference's opacity draw, fed ours
            state["range"] = (lo, hi)
            return np.array([f])

        saved = np.random.shuffle, np.random.uniform
        np.random.shuffle, np.random.uniform = shuffle, uniform
        try:
            ref.anomaly_source = lambda img, texture_img_list=None, ref=ref: ref._structure_source(img=img)
            theirs, theirs_mask = ref.generate_anomaly(img=img, texture_img_list=None)
        finally:
            np.random.shuffle, np.random.uniform = saved
        assert state["range"] == (0.15, 1.0)
        assert np.array_equal(out.mask[i, 0].numpy(), theirs_mask.astype(np.float32))
        assert np.array_equal(_u8(out.image[i]), theirs)


@needs_official
def test_reference_perlin_mask_area_law(official) -> None:
    """Unrotated masks (ASBench's DeSTSeg copy) from the reference numpy Perlin vs ours: the same area law."""
    _, perlin, _ = official
    np.random.seed(0)
    torch.manual_seed(0)
    theirs = []
    for _ in range(400):
        sx, sy = (int(2 ** torch.randint(0, 6, (1,)).numpy()[0]) for _ in range(2))
        theirs.append(float((perlin.rand_perlin_2d_np((64, 64), (sx, sy)) > 0.5).mean()))
    b = make_toy_batch(50, 64, seed=7)
    g = Memseg(probability=1.0, foreground="none", texture_source="none", rotation=0.0)
    ours = torch.cat([g.generate(b, seed=s).mask for s in range(8)]).mean((1, 2, 3)).numpy()
    assert stats.kstest(ours, theirs).pvalue > ALPHA
