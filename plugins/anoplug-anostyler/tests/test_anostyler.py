"""AnoStyler: the conformance kit plus one mechanism test per paper step (each names the removal it catches).

AnoStyler is zero-shot (nothing to fit), so the kit's image-level variant runs; see the
README ("How the learned-method contract applies") for why the learned variant does not.
Everything runs on the committed tiny CLIP and the converted VGG16 at 64² (skipped, with
the set-up command, when the VGG16 cache is missing).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anoplug.testing import GeneratorConformance, make_toy_batch
from anoplug.zoo.vgg import lpips_vgg16_path

pytestmark = pytest.mark.skipif(not lpips_vgg16_path().is_file(),
                                reason="VGG16 weights missing: run `make setup` (python tools/convert_lpips.py)")

FAST = {"image_size": 64, "crop_size": 32, "num_crops": 4, "steps": 2}


class TestAnostyler(GeneratorConformance):
    generator_name = "anostyler"
    params = FAST
    bad_params = {"image_size": 60, "lambda_tv": -1.0, "prompt_set": "both", "crop_size": 128, "fg_source": "sam"}
    entry_module = "anoplug_anostyler.plugin"
    batch_size = 2
    replay_needs_seeds = True  # U-Net init, crops and warps are drawn from the seed at optimisation time


# -- helpers ----------------------------------------------------------------------------------------
def _gen(**kw):
    from anoplug_anostyler.method import Anostyler

    return Anostyler(**{**FAST, **kw})


def _square_mask(size=64, lo=16, hi=48):
    m = torch.zeros(1, 1, size, size)
    m[..., lo:hi, lo:hi] = 1
    return m


def _stylise(gen, image, mask, defect="scratch", seed=0):
    t_n, t_a = gen.text_embeddings("nut", defect)
    return gen.stylise(image, mask, t_n, t_a, torch.Generator().manual_seed(seed))


def _alignment(gen, image, target, defect="scratch"):
    """cos(CLIP(target) − CLIP(image), T_a − T_n): how far the edit points along the text direction."""
    t_n, t_a = gen.text_embeddings("nut", defect)
    with torch.no_grad():
        d = gen.clip.image(target) - gen.clip.image(image)
    return float(F.cosine_similarity(d, t_a - t_n).item())


#: mechanism runs at 32² (crops 16²) so that each optimisation takes a second or two
SMALL = {"image_size": 32, "crop_size": 16}


@pytest.fixture(scope="module")
def small(nut):
    return F.interpolate(nut.image[:1], size=(32, 32), mode="bilinear", antialias=True, align_corners=False)


@pytest.fixture(scope="module")
def nut():
    from anoplug.data.toy import ToyDataset

    return ToyDataset("nut", split="train", size=64).batch([0, 1])


# -- 1. meta-shape priors -------------------------------------------------------------------------------
def test_shape_count_follows_exp_minus_alpha_m():
    """p(m) ∝ exp(−0.7·m) over 1..5: catches a uniform or fixed number of shapes."""
    from anoplug_anostyler.shapes import draw_count

    g = torch.Generator().manual_seed(0)
    counts = np.bincount([draw_count(g, 5, 0.7) for _ in range(4000)], minlength=6)[1:] / 4000
    p = np.exp(-0.7 * np.arange(1, 6))
    assert np.abs(counts - p / p.sum()).max() < 0.03, counts


def test_each_meta_shape_has_its_published_geometry():
    """Line thin (≤ 7 px) and long (≥ 40 px), dot compact (r ≲ 35·1.4·1.35), freeform one 8-connected part.

    Catches a swapped shape, a line without its 1→7 px taper cap, or a freeform without the
    largest-component step.
    """
    from anoplug_anostyler.shapes import dot, freeform, line
    from scipy.ndimage import distance_transform_edt, label

    g = torch.Generator().manual_seed(1)
    for _ in range(15):
        m = line(g)
        ys, xs = np.nonzero(m)
        assert distance_transform_edt(m).max() <= 6  # ~half of the 7-px maximum (+ anti-alias, joints of bent lines)
        assert max(np.ptp(ys), np.ptp(xs)) >= 40 or ys.min() == 0 or xs.min() == 0 or ys.max() == 255 \
            or xs.max() == 255  # long unless it leaves the canvas
        d = dot(g)
        if d.any():
            ys, xs = np.nonzero(d)
            assert max(np.ptp(ys), np.ptp(xs)) <= 2 * 35 * 1.4 * 1.4
        f = freeform(g)
        assert label(f, structure=np.ones((3, 3)))[1] <= 1


# -- 2. foreground restriction --------------------------------------------------------------------------------
def test_foreground_restriction_keeps_the_prior_on_the_object():
    """With an object mask the whole prior lies on the object; catches a missing intersection (fg_mask off differs)."""
    b = make_toy_batch(4, 64)
    b.object_mask = torch.zeros_like(b.object_mask)
    b.object_mask[..., :, :24] = 1  # object = left 3/8 of the image
    on = _gen().sample(b, [torch.Generator().manual_seed(s) for s in range(4)])
    off = _gen(fg_mask=False).sample(b, [torch.Generator().manual_seed(s) for s in range(4)])
    for r in on:
        ys, xs = np.nonzero(r["prior"].numpy())
        assert r["foreground"] == "object_mask" and len(xs) and xs.max() < 24 * 4
    assert any(np.nonzero(r["prior"].numpy())[1].max() >= 24 * 4 for r in off), "no prior ever left the object"


def test_corner_standin_finds_toy_objects_and_leaves_textures_whole():
    """The SAM stand-in (four background corners): IoU ≥ 0.75 with the nut's object mask, whole image on metal."""
    from anoplug_anostyler.foreground import corner_foreground

    from anoplug.data.toy import ToyDataset

    nut = ToyDataset("nut", split="train", size=128).batch([0, 1])
    for i in range(2):
        fg = corner_foreground(nut.image[i]).astype(bool)
        obj = nut.object_mask[i, 0].numpy() > 0.5
        assert (fg & obj).sum() / (fg | obj).sum() >= 0.75
    metal = ToyDataset("metal", split="train", size=128).batch([0])
    assert corner_foreground(metal.image[0]).all()


# -- 3. two-class prompts ----------------------------------------------------------------------------------
def test_paper_prompts_carry_the_defect_name_and_code_prompts_do_not():
    """Paper: T_a depends on the defect name; code flag: identical for any name (the released code's behaviour)."""
    from anoplug_anostyler.prompts import anomaly_phrases, normal_phrases

    assert len(normal_phrases("screw")) == 175 and len(anomaly_phrases("screw", "rusty")) == 175
    assert sum("rusty" in s for s in anomaly_phrases("screw", "rusty")) == 75
    assert not any("rusty" in s for s in anomaly_phrases("screw", "rusty", "code"))
    paper, code = _gen(), _gen(prompt_set="code")
    assert not torch.equal(paper.text_embeddings("nut", "scratch")[1], paper.text_embeddings("nut", "hole")[1])
    assert torch.equal(code.text_embeddings("nut", "scratch")[1], code.text_embeddings("nut", "hole")[1])


def test_prompt_flag_code_ignores_the_defect_name_end_to_end(nut):
    """With prompt_set='code' two defect names give the same pixels (mask too); catches a prompt leak."""
    g = _gen(prompt_set="code")
    a = g.generate(nut.with_conditions(prompt=["scratch", "scratch"]), seed=0)
    b = g.generate(nut.with_conditions(prompt=["hole", "hole"]), seed=0)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)


# -- 4. style U-Net ------------------------------------------------------------------------------------------
def test_style_unet_has_the_published_size_and_a_seeded_fresh_init():
    """615,267 parameters (ngf 16); init drawn from the given generator only (catches global-RNG init)."""
    from anoplug_anostyler.stylenet import PAPER_PARAMETERS, StyleUNet, init_weights

    assert sum(p.numel() for p in StyleUNet().parameters()) == PAPER_PARAMETERS == 615_267
    torch.manual_seed(123)
    a = init_weights(StyleUNet(), torch.Generator().manual_seed(5)).state_dict()
    torch.manual_seed(456)
    b = init_weights(StyleUNet(), torch.Generator().manual_seed(5)).state_dict()
    c = init_weights(StyleUNet(), torch.Generator().manual_seed(6)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_output_is_the_last_forward_pass_of_a_fresh_unet(nut):
    """steps=1 renders the *initial* U-Net (the update after the last forward is never shown, as officially).

    Catches a network carried over between images, or rendering after the final update.
    """
    from anoplug_anostyler.stylenet import StyleUNet, init_weights

    g = _gen(steps=1)
    image, mask = nut.image[:1], _square_mask()
    styled, hist = _stylise(g, image, mask)
    fresh = init_weights(StyleUNet(), torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(styled, fresh(image), atol=1e-6)
    styled2, _ = _stylise(g, image, mask)
    assert torch.equal(styled, styled2) and len(hist) == 1


# -- 5. losses ------------------------------------------------------------------------------------------------
def test_directional_loss_moves_the_clip_embedding_towards_the_anomaly_text(small):
    """Only the directional terms on: the edit's CLIP direction turns towards T_a − T_n over the optimisation.

    Compared with the render of the initial U-Net (same seed); with the directional terms
    removed nothing else pulls, so the alignment would not move. Also catches a sign flip
    or a text direction built from the wrong pair.
    """
    image, mask = small, _square_mask(32, 4, 28)
    only = dict(lambda_c=0.0, lambda_tv=0.0, lambda_mclip=0.0, num_crops=8, **SMALL)
    start = _gen(**{**only, "steps": 1})
    end = _gen(**{**only, "steps": 15})
    a0 = _alignment(start, image, image * (1 - mask) + _stylise(start, image, mask)[0] * mask)
    a1 = _alignment(end, image, image * (1 - mask) + _stylise(end, image, mask)[0] * mask)
    assert a1 > a0 + 0.1, (a0, a1)


def test_masked_clip_loss_pulls_the_masked_region_to_the_anomaly_text(small):
    """Only the masked-CLIP term on: cos(CLIP(target ⊙ M), T_a) rises over the optimisation; catches its removal."""
    image, mask = small, _square_mask(32, 4, 28)
    g = _gen(lambda_c=0.0, lambda_tv=0.0, lambda_pdir=0.0, lambda_gdir=0.0, steps=15, **SMALL)
    _, hist = _stylise(g, image, mask)
    assert hist[-1]["masked"] < hist[0]["masked"] - 0.05, (hist[0]["masked"], hist[-1]["masked"])


def test_mask_restricts_change_to_the_prior(nut):
    """Pixels outside the returned mask are bit-identical and inside they change; catches a missing composite."""
    out = _gen().generate(nut.with_conditions(prompt=["scratch", "crack"]), seed=3)
    inside = out.mask.bool().expand_as(out.image)
    assert torch.equal(out.image[~inside], nut.image[~inside])
    assert (out.image - nut.image).abs()[inside].mean() > 0.01


def test_content_loss_keeps_the_structure(small):
    """With λ_c (and the CLIP terms on) the composite stays closer to the normal image's VGG features than without.

    Catches a content loss that is not applied (or compares the wrong images).
    """
    from anoplug_anostyler import losses as L

    image, mask = small, _square_mask(32, 4, 28)
    kw = dict(steps=15, num_crops=8, lambda_tv=0.0, **SMALL)
    keep, free = _gen(**kw, lambda_c=3000.0), _gen(**kw, lambda_c=0.0)
    vgg = keep.vgg
    ref = {k: v.detach() for k, v in vgg(image, L.CONTENT_LAYERS).items()}
    dist = []
    for g in (keep, free):
        target = image * (1 - mask) + _stylise(g, image, mask)[0] * mask
        with torch.no_grad():
            dist.append(float(L.content_loss(vgg, target, ref)))
    assert dist[0] < 0.7 * dist[1], dist


def test_tv_prior_smooths(small):
    """A TV-weighted run ends with a smaller TV of the composite than a run without it; catches its removal.

    The published λ_tv = 0.002 is a small regulariser next to 9000·L_patch; here it is raised to
    make the effect visible in 15 steps.
    """
    from anoplug_anostyler import losses as L

    image, mask = small, _square_mask(32, 4, 28)
    tv = []
    for lam in (200.0, 0.0):
        g = _gen(steps=15, num_crops=8, lambda_tv=lam, **SMALL)
        target = image * (1 - mask) + _stylise(g, image, mask)[0] * mask
        tv.append(float(L.tv_prior(target)))
    assert tv[0] < 0.8 * tv[1], tv


def test_patch_weights_rejection_and_perspective():
    """Coverage weights (0 off-mask, sum 1, uniform flag 1/N); the 0.7 rejection; the warp equals torchvision's.

    Catches coverage weighting replaced by uniform (or the reverse), a missing rejection
    threshold, or a perspective warp with the wrong corner convention.
    """
    import torchvision.transforms.functional as TF
    from anoplug_anostyler import losses as L

    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :16, :16] = 1
    crops = L.Crops(torch.tensor([[0, 0], [32, 32], [8, 8]]), 16)
    w = L.patch_weights(mask, crops, "coverage")
    assert torch.allclose(w, torch.tensor([1.0, 0.0, 0.25]) / 1.25)
    assert torch.allclose(L.patch_weights(mask, crops, "uniform"), torch.full((3,), 1 / 3))
    assert torch.allclose(L.patch_weights(torch.zeros_like(mask), crops, "coverage"), torch.full((3,), 1 / 3))
    g = _gen()
    assert g.params.thresh == 0.7
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ends = L._perspective_ends(torch.Generator().manual_seed(1), 3, 32, 0.5)
    ours = L.perspective_warp(x, torch.Generator().manual_seed(1), 0.5)
    ref = torch.cat([TF.perspective(x[i:i + 1], [[0, 0], [31, 0], [31, 31], [0, 31]], ends[i].long().tolist(),
                                    fill=0) for i in range(3)])
    assert (ours - ref).abs().mean() < 0.02
    assert torch.allclose(L.perspective_warp(x, torch.Generator(), 0.0), x, atol=1e-5)


# -- 6. optimisation ----------------------------------------------------------------------------------------------
def test_defaults_are_the_official_configuration():
    """config.yaml + StyleNet: catches a changed default (steps, lr, weights, sizes, crops, threshold)."""
    from anoplug_anostyler.method import Anostyler

    d = Anostyler().params
    assert (d.steps, d.lr, d.lr_step, d.lr_gamma, d.num_crops, d.thresh) == (76, 5e-4, 100, 0.5, 64, 0.7)
    assert (d.lambda_pdir, d.lambda_gdir, d.lambda_mclip, d.lambda_c, d.lambda_tv) == (9000, 500, 1000, 150, 0.002)
    assert d.sizes() == {"image_size": 512, "crop_size": 128} and (d.m_max, d.alpha, d.ngf) == (5, 0.7, 16)
    assert Anostyler(preset="cpu").params.sizes() == {"image_size": 256, "crop_size": 64}
    assert d.prompt_set == "paper" and d.patch_weighting == "coverage" and d.fg_mask and not math.isnan(d.alpha)


def test_optimisation_runs_on_the_trainer_and_lowers_the_loss(nut):
    """Each image gets `steps` Trainer rows and the total loss falls; catches a loop that does not optimise."""
    g = _gen(steps=12, num_crops=8, **SMALL)
    out = g.generate(nut.with_conditions(target_mask=torch.cat([_square_mask(lo=8, hi=56)] * 2),
                                         prompt=["scratch", "stain"]), seed=0)
    for i, hist in enumerate(g.last_histories):
        assert len(hist) == 12 and out.meta[i]["optimisation"]["steps"] == 12
        assert np.mean([h["loss"] for h in hist[-3:]]) < hist[0]["loss"]
    assert out.label == ["scratch", "stain"]


def test_a_clip_folder_loads_through_the_real_path(tmp_path, nut):
    """`clip_model=<folder>` (how a real ViT-B/32 is used) gives the same bytes as the tiny model saved there."""
    from anoplug.zoo.clip import load_clip, save_clip

    model, tok, prep = load_clip("tiny")
    save_clip(model, tok, tmp_path / "clip", prep)
    b = nut[[0]].with_conditions(prompt=["scratch"])
    a = _gen().generate(b, seed=1)
    c = _gen(clip_model=str(tmp_path / "clip")).generate(b, seed=1)
    assert torch.equal(a.image, c.image)


def test_cli_passes_prompt_and_target_masks(tmp_path):
    """`anoplug generate anostyler --prompt NAME --masks DIR`: the label is the defect name, the mask is the file's."""
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((64, 64), np.uint8)
    m[10:30, 20:50] = 255
    Image.fromarray(m).save(masks / "a.png")
    exe = os.path.join(os.path.dirname(sys.executable), "anoplug")
    args = [exe, "generate", "anostyler", "--data", "toy:nut", "-n", "1", "--size", "64", "--prompt", "rust spot",
            "--masks", str(masks), "--workers", "1", "-q", "--out", str(tmp_path / "out"),
            *[x for k, v in {**FAST, "steps": 1}.items() for x in ("-p", f"{k}={v}")]]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads((tmp_path / "out" / "nut" / "manifest.jsonl").read_text().splitlines()[0])
    assert row["label"] == "rust_spot" and row["conditions"]["prompt"] == "rust spot"
    written = np.array(Image.open(tmp_path / "out" / "nut" / row["mask"])) > 127
    assert (written == (m > 127)).all()
