"""AnomalyHybrid: the learned-generator kit (local and global inference) plus one test per step of the method.

Each mechanism test says which step it covers and which removal it catches (the step was
disabled once locally and the test seen to fail). Tests on trained behaviour use the
shipped "surface3d" checkpoint (64 px, cpu preset), which loads in well under a second.
"""

from __future__ import annotations

import pytest
import torch
from anoplug_anomalyhybrid import anomalyhybrid as AH
from anoplug_anomalyhybrid import structure as S
from anoplug_anomalyhybrid.networks import compose
from anoplug_anomalyhybrid.views import GRID, View, ViewParams, apply_view, draw_affine

from anoplug.conditions import ConditionError
from anoplug.data import open_dataset
from anoplug.testing import LearnedGeneratorConformance, make_toy_batch
from anoplug.train import StepContext
from anoplug.types import Batch

TINY = {"resolution": 32, "width": 4, "n_down": 2, "spade_hidden": 4, "d_width": 4, "d_layers": 2,
        "batch_size": 2, "fit_steps": 2}


def shipped(**update) -> AH.AnomalyHybrid:
    """The shipped checkpoint with some generation parameters changed (they do not touch the weights)."""
    g = AH.AnomalyHybrid.from_pretrained("surface3d")
    g.params = g.params.model_copy(update=update)
    return g


@pytest.fixture(scope="module")
def surface() -> Batch:
    return open_dataset("toy:surface3d", split="train", size=64).all()[:4]


def disk(size: int, cy: int, cx: int, r: int, n: int = 1) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float().expand(n, 1, size, size).clone()


class TestAnomalyHybridConformance(LearnedGeneratorConformance):
    generator_name = "anomalyhybrid"
    generator_class = AH.AnomalyHybrid
    params = TINY
    bad_params = {"edit_strength": -1.0, "preset": "gpu", "resolution": 30, "mask_threshold": 1.0}
    entry_module = "anoplug_anomalyhybrid.plugin"
    replay_needs_seeds = False  # every draw is in the sample records


class TestAnomalyHybridGlobalConformance(LearnedGeneratorConformance):
    generator_name = "anomalyhybrid-global"
    generator_class = AH.AnomalyHybridGlobal
    params = TINY
    bad_params = {"decoder": "both"}
    conditions = {"source_image": make_toy_batch(4, 64, seed=99).image}
    entry_module = "anoplug_anomalyhybrid.plugin"
    replay_needs_seeds = False


# -- step 1: structure maps --------------------------------------------------------------------------------------
def test_depth_source_batch_refuses_rgb_only_data_in_one_line():
    """Step 1. Catches a silent fallback to the proxy when the user asked for real depth."""
    g = AH.AnomalyHybrid(**TINY, depth_source="batch")
    with pytest.raises(ConditionError, match="has no depth") as ei:
        g.depth_of(make_toy_batch(2, 32))
    assert "\n" not in str(ei.value)


def test_batch_depth_is_read_and_the_proxy_only_stands_in_for_rgb_only_data(surface):
    """Step 1. Catches ignoring ``batch.depth`` (the dataset's own depth) in favour of the proxy."""
    g = AH.AnomalyHybrid(**TINY)
    assert torch.equal(g.depth_of(surface), surface.depth)
    rgb = Batch(image=surface.image, mask=surface.mask, label=surface.label, meta=surface.meta)
    assert torch.allclose(g.depth_of(rgb), S.shading_proxy(surface.image))


def test_depth_estimator_needs_a_local_directory(tmp_path):
    """Step 1 (Depth-Anything-V2 path). Catches anything but a clear error for a missing local checkpoint."""
    g = AH.AnomalyHybrid(**TINY, depth_source="estimator", depth_model=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        g.depth_of(make_toy_batch(1, 32))


def test_depth_anything_path_loads_a_local_transformers_checkpoint(tmp_path):
    """Step 1 (Depth-Anything-V2 path), on a tiny randomly initialised checkpoint built from a config.

    Catches the estimator path not reaching the model (depth from elsewhere) or keeping its
    inverse-depth sign (it must be negated: larger = farther).
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    bb = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, patch_size=14,
                      image_size=56, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=16, patch_size=14, neck_hidden_sizes=[8, 16],
                              fusion_hidden_size=8, head_hidden_size=8, reassemble_factors=[2, 1])
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    model.save_pretrained(tmp_path)
    proc = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False, do_pad=False)
    proc.save_pretrained(tmp_path)
    g = AH.AnomalyHybrid(**TINY, depth_source="estimator", depth_model=str(tmp_path))
    b = make_toy_batch(2, 32)
    depth = g.depth_of(b)
    with torch.no_grad():
        inputs = proc(images=list(b.image), return_tensors="pt", do_rescale=False)
        pred = model(**inputs).predicted_depth[:, None]
    want = -torch.nn.functional.interpolate(pred, size=(32, 32), mode="bilinear", align_corners=False)
    assert depth.shape == (2, 1, 32, 32) and torch.allclose(depth, want, atol=1e-5)


# -- step 2: the generator ------------------------------------------------------------------------------------------
def test_composition_keeps_the_input_outside_the_fusion_map():
    """Step 2. Catches a decoder whose output is A_gen itself (no A_out = C_in(1 − M) + A_gen M)."""
    g = AH.AnomalyHybrid(**TINY)
    c, d, e = torch.rand(2, 3, 32, 32), torch.randn(2, 1, 32, 32) * 0.3, torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = g.G(c, d, e)
    for k in ("depth", "edge"):
        assert torch.allclose(out[k], compose(c, out[f"{k}_source"], out[f"{k}_fusion"]), atol=1e-6)
    m = torch.zeros(1, 1, 4, 4)
    m[..., 1:3, 1:3] = 1
    x, a = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    y = compose(x, a, m)
    assert torch.equal(y[(m == 0).expand_as(y)], x[(m == 0).expand_as(x)])
    assert torch.equal(y[(m == 1).expand_as(y)], a[(m == 1).expand_as(a)])


def test_ahd_reads_depth_in_its_decoder_and_ahe_reads_edges():
    """Step 2. With the encoding fixed, AHD's output must move with the depth map and AHE's with the edge map.

    Catches decoders that ignore their condition (the SPADE modulation removed): then only the
    encoder would see depth/edges and the decoders' outputs here would be identical.
    """
    g = AH.AnomalyHybrid(**TINY)
    c, d, e = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    bump = disk(32, 16, 16, 6) * 0.8
    with torch.no_grad():
        feats = g.G.encode(c, d, e)
        a1, _ = g.G.ahd(feats, d)
        a2, _ = g.G.ahd(feats, d + bump)
        e1, _ = g.G.ahe(feats, e * 2 - 1)
        e2, _ = g.G.ahe(feats, (torch.maximum(e, bump)) * 2 - 1)
    assert (a1 - a2).abs().max() > 1e-3
    assert (e1 - e2).abs().max() > 1e-3


def test_trained_depth_decoder_follows_an_edited_depth_map(surface):
    """Step 2 + 5 (the done-when target). A dent edited into the depth map over a disk must change the image
    there and (almost) nowhere else; a protrusion must change it differently; the mask lies in the edit.

    Catches an AHD that does not read depth (the output would not move with the edit) and a
    fusion map that does not localise the change.
    """
    target = disk(64, 32, 32, 11, len(surface))
    ins, outs, masks = [], [], []
    for edit in ("dent", "protrusion"):
        g = shipped(edit=edit, decoder="depth")
        out = g.generate(surface.with_conditions(target_mask=target), seed=0)
        diff = (out.image - surface.image).abs().mean(1, keepdim=True)
        ring = S.gaussian_blur(target, 3.0) > 0.02  # the edit and a few px of its smooth rim
        ins.append(float(diff[target.bool()].mean()))
        outs.append(float(diff[~ring].mean()))
        masks.append(out.mask)
        precision = float((out.mask * ring).sum() / out.mask.sum().clamp_min(1))
        assert precision > 0.8, f"{edit}: only {precision:.2f} of the mask lies on the edit"
    assert min(ins) > 0.02 and max(outs) < 0.25 * min(ins), (ins, outs)


def test_dent_and_protrusion_give_different_shading(surface):
    """Step 5. The sign of the depth edit must reach the image. Catches an edit that ignores its sign."""
    target = disk(64, 32, 32, 11, len(surface))
    outs = []
    for edit in ("dent", "protrusion"):
        g = shipped(edit=edit, decoder="depth", edit_jitter=0.0)
        outs.append(g.generate(surface.with_conditions(target_mask=target), seed=0).image)
    inside = target.bool().expand_as(outs[0])
    assert float((outs[0] - outs[1])[inside].abs().mean()) > 0.02


def test_user_edited_depth_with_edit_none_drives_the_output(surface):
    """Step 5 (typed depth condition from Python). ``edit="none"`` takes ``batch.depth`` as the edited target
    (``target_mask`` says where it was edited): the output there moves with the depth map, elsewhere it does not.

    Catches ``edit="none"`` still adding its own edit, or the batch depth being ignored.
    """
    g = shipped(edit="none", decoder="depth")
    where = disk(64, 24, 40, 10, len(surface))
    same = g.generate(surface.with_conditions(target_mask=where), seed=0)
    span = float(surface.depth.max() - surface.depth.min())
    edited = surface.clone()
    edited.depth = surface.depth + 0.6 * span * S.mask_profile(where)
    moved = g.generate(edited.with_conditions(target_mask=where), seed=0)
    region = disk(64, 24, 40, 12, len(surface)).bool().expand_as(surface.image)
    moved_by_depth = (moved.image - same.image).abs()
    assert float(moved_by_depth[region].mean()) > 0.02
    assert float(moved_by_depth[~region].mean()) < 0.1 * float(moved_by_depth[region].mean())


# -- step 3: augmented views ---------------------------------------------------------------------------------------------
def test_tps_views_make_locally_misaligned_pairs_whose_targets_share_the_condition_view():
    """Step 3. Content and condition views must differ (locally: TPS), and each target must be the RGB under
    *its* condition's augmentation.

    Catches: TPS removed (content == target: nothing to learn for the fusion map); a target
    warped with the content's view instead of the condition's.
    """
    g = AH.AnomalyHybrid(**TINY, geo_prob=0.0)
    torch.manual_seed(0)
    image = S.gaussian_blur(torch.rand(4, 3, 32, 32), 1.5)
    depth = image.mean(1, keepdim=True)  # depth = grey level, so the pairing can be read off
    v = g.training_views(image, depth, image[:, :1], torch.Generator().manual_seed(1))
    assert torch.allclose(v["target_depth"].mean(1, keepdim=True), v["depth"], atol=1e-5)
    assert torch.allclose(v["target_edge"][:, :1], v["edge"], atol=1e-5)
    diff = (v["content"] - v["target_depth"]).abs().amax(1)
    assert float(diff.max()) > 0.02, "content and depth views are identical: no TPS warp"
    assert float((diff < 1e-2).float().mean()) > 0.3, "the warp is not local"
    flat = AH.AnomalyHybrid(**TINY, geo_prob=0.0, tps_points=0)
    w = flat.training_views(image, depth, image[:, :1], torch.Generator().manual_seed(1))
    assert torch.allclose(w["content"], w["target_depth"], atol=1e-5)


def test_views_use_flips_and_resize_translate_pad():
    """Step 3. A view's base and own flips mirror it exactly; its resize–translate–pad shrinks and moves it.

    Catches a view without its shared base affine or without its own flip / resize–translate–pad.
    """
    x = torch.rand(1, 1, 8, 8)
    ident, none = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]), torch.zeros(1, GRID * GRID, 2)
    flip_lr, flip_tb = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]])
    on, off = torch.tensor([True]), torch.tensor([False])
    assert torch.allclose(apply_view(x, View(ident, flip_lr, on, none)), x.flip(-1), atol=1e-6)
    assert torch.allclose(apply_view(x, View(flip_tb, ident, off, none)), x.flip(-2), atol=1e-6)
    shrink = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0]])  # half size, moved right by a quarter of the width
    y = apply_view(x, View(ident, shrink, on, none))
    assert not torch.allclose(y, x, atol=1e-3)
    assert torch.allclose(y[..., 2:6, 4:8], torch.nn.functional.avg_pool2d(x, 2), atol=0.15)
    vp = ViewParams(tps_points=0, geo_prob=1.0)
    drawn = draw_affine(256, torch.Generator().manual_seed(0), vp)
    assert 0.35 < float(drawn[:, 0].mean()) < 0.65 and 0.35 < float(drawn[:, 1].mean()) < 0.65
    assert float(drawn[:, 2].min()) >= 0.8 - 1e-6 and float(drawn[:, 2].max()) <= 1.0


# -- step 4: losses ----------------------------------------------------------------------------------------------------------
def _one_batch(g: AH.AnomalyHybrid):
    g.build(make_toy_batch(2, 32, seed=1), None, torch.Generator().manual_seed(0))
    ctx = StepContext(0, 0, torch.Generator().manual_seed(3), None)  # type: ignore[arg-type]
    return g.gan.draw(ctx), ctx


def test_discriminator_is_conditional_on_the_followed_condition():
    """Step 4. D must see each output with the condition its decoder followed (depth slot / edge slot).

    Catches an unconditional D (its output would not move with the condition) and a D fed
    the wrong or no condition during training.
    """
    g = AH.AnomalyHybrid(**TINY)
    batch, ctx = _one_batch(g)
    img = batch.real
    (cond,) = batch.d_cond
    with torch.no_grad():
        assert (g.D(img, cond) - g.D(img, torch.zeros_like(cond))).abs().max() > 1e-4
    content, depth, edge = batch.g_input
    n = len(depth)
    assert torch.equal(cond[:n, :1], depth) and not cond[:n, 1:].any()
    assert torch.equal(cond[n:, 1:], edge * 2 - 1) and not cond[n:, :1].any()
    seen = []
    hook = g.D.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    with torch.no_grad():
        g.gan.d_terms(ctx, batch, g.gan.generate(batch), 0)
    hook.remove()
    assert seen and all(torch.equal(c, cond) for c in seen)


def test_perceptual_loss_is_a_generator_term():
    """Step 4. Catches a generator loss without the VGG perceptual term (or with another weight)."""
    from anoplug.zoo.vgg import perceptual_loss

    g = AH.AnomalyHybrid(**TINY, w_vgg=10.0)
    batch, ctx = _one_batch(g)
    with torch.no_grad():
        fake = g.gan.generate(batch)
        terms = g.gan.g_terms(ctx, batch, fake)
        want = 10.0 * perceptual_loss(g.gan.vgg, fake["fake"], batch.real, AH.VGG_LAYERS, kind="l1")
    assert set(terms) == {"adv", "vgg"}
    assert torch.allclose(terms["vgg"], want)


def test_fusion_sparsity_prior_only_when_asked():
    """Step 4 (our addition, ``w_fusion``). Off by default (the paper's losses); when on, ``w·mean(M_gen)``.

    Catches the prior missing from the shipped recipe's loss, or present in the paper's default.
    """
    g = AH.AnomalyHybrid(**TINY, w_fusion=2.0)
    batch, ctx = _one_batch(g)
    with torch.no_grad():
        fake = g.gan.generate(batch)
        terms = g.gan.g_terms(ctx, batch, fake)
    want = 2.0 * 0.5 * (fake["depth_fusion"].mean() + fake["edge_fusion"].mean())
    assert torch.allclose(terms["fusion"], want)
    assert AH.AnomalyHybridParams().w_fusion == 0.0


def test_fit_is_unsupervised():
    """Step 3/4. Normal images alone train it (no anomalies, no masks); the history logs both loss terms."""
    g = AH.AnomalyHybrid(**TINY).fit(make_toy_batch(2, 32, seed=4), None, steps=1)
    assert {"d/adv", "g/adv", "g/vgg"} <= set(g.history[-1])


# -- step 5/6: inference and the mask ---------------------------------------------------------------------------------------
def test_edge_decoder_edit_draws_a_stroke_inside_the_region():
    """Step 5 (AHE). Catches an edge edit outside the region or no edge edit at all."""
    g = AH.AnomalyHybrid(**TINY, decoder="edge")
    b = make_toy_batch(1, 32)
    recs = g.sample(b, [torch.Generator().manual_seed(0)])
    prof = g.regions(b, recs)
    edge = torch.zeros(1, 1, 32, 32)
    _, new_edge = g.edited(torch.zeros(1, 1, 32, 32), edge, prof, recs)
    assert float(new_edge.max()) > 0.5
    assert not bool((new_edge * (prof <= 0.05)).any())


def test_mask_is_fusion_and_visible_change(surface):
    """Step 6. The mask must be ``(fusion > threshold) ∧ (change > tol)``.

    Catches a mask taken from the fusion map alone (it would cover unchanged pixels) or from the edit region.
    """
    g = shipped()
    b = surface.with_conditions(target_mask=disk(64, 30, 30, 10, len(surface)))
    recs = g.sample(b, [torch.Generator().manual_seed(i) for i in range(len(b))])
    image, depth, edge = g.structure(b)
    nd, ne = g.edited(depth, edge, g.regions(b, recs), recs)
    with torch.no_grad():
        source, fusion = g.run(image, nd, ne, [r["decoder"] for r in recs])
    fusion = torch.maximum(fusion, g.regions(b, recs))  # fusion="union", the default of local mode
    out = g.finish(b, image, source, fusion, recs)
    composed = compose(b.image, source, fusion).clamp(0, 1)
    want = (fusion > g.params.mask_threshold) & ((composed - b.image).abs().amax(1, keepdim=True) > g.params.mask_tol)
    assert torch.equal(out.mask.bool(), want)
    assert bool(out.mask.any())


def test_union_fusion_adds_the_edit_region_and_model_fusion_is_m_gen_alone(surface):
    """Step 6 (local mode). ``fusion="union"`` must fuse the edited region in; ``"model"`` must use M_gen only.

    Catches the union being dropped (the default would then follow M_gen alone) or applied in "model" mode.
    """
    target = disk(64, 32, 32, 11, len(surface))
    union = shipped(decoder="depth", edit="dent").generate(surface.with_conditions(target_mask=target), seed=0)
    model = shipped(decoder="depth", edit="dent", fusion="model").generate(surface.with_conditions(target_mask=target),
                                                                          seed=0)
    core = disk(64, 32, 32, 5, len(surface)).bool()
    assert float(union.mask[core].mean()) > 0.5
    g = shipped(decoder="depth", edit="dent", fusion="model")
    b = surface.with_conditions(target_mask=target)
    recs = model.samples
    image, depth, edge = g.structure(b)
    nd, ne = g.edited(depth, edge, g.regions(b, recs), recs)
    with torch.no_grad():
        _, fusion = g.run(image, nd, ne, [r["decoder"] for r in recs])
    assert not bool((model.mask.bool() & (fusion <= g.params.mask_threshold)).any())
