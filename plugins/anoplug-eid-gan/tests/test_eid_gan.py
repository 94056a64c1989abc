"""EID-GAN: the conformance kit on a tiny DCGAN (32², width 8), plus one test per step of the method.

Each mechanism test names its step; each was checked to fail with its step disabled (how is
said in its docstring).
"""

from __future__ import annotations

import pytest
import torch
from anoplug_eid_gan import protocol as P
from anoplug_eid_gan.eidgan import EIDGAN, prepare_outliers
from anoplug_eid_gan.networks import DCGANDiscriminator, DCGANGenerator
from anoplug_eid_gan.penalty import box_indicator, crop_error, crop_penalty, mask_boxes

from anoplug.data.toy import ToyDataset
from anoplug.seeding import rngs_for
from anoplug.testing import LearnedGeneratorConformance, make_toy_anomalies, make_toy_batch
from anoplug.types import Batch

TINY = {"resolution": 32, "width": 8, "z_dim": 16, "batch_size": 4, "fit_steps": 2}


class TestEIDGANConformance(LearnedGeneratorConformance):
    generator_name = "eid-gan"
    generator_class = EIDGAN
    params = TINY
    bad_params = {"resolution": 48, "penalty_weight": -2.0, "output": "sideways", "tol_levels": 300,
                  "max_outlier_area": 0.0}
    entry_module = "anoplug_eid_gan.plugin"


def tiny_defects(n: int = 8, size: int = 32, seed: int = 3):
    """Toy defects with small dark squares (a few % of the image) at varied places."""
    b = make_toy_batch(n, size, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        y, x = (int(v) for v in torch.randint(2, size - 6, (2,), generator=g))
        b.mask[i, :, y:y + 4, x:x + 4] = 1
    b.image = torch.where(b.mask.bool().expand_as(b.image), torch.full_like(b.image, 0.05), b.image)
    b.label = ["hole"] * n
    return b


def fitted(steps: int = 2, **params) -> EIDGAN:
    return EIDGAN(**{**TINY, **params}).fit(None, tiny_defects(), steps=steps)


# -- step 1: the outlier dataset ---------------------------------------------------------------------
def test_outlier_dataset_boxes_and_the_tiny_outlier_filter():
    """Step 1: each defect's crop region is its mask's tight box; ``max_outlier_area`` keeps only tiny outliers.

    Checked to fail: padding the box by one pixel, or ignoring ``max_area``."""
    d = tiny_defects(4, 32)
    big = make_toy_anomalies(2, 32)  # 8 x 10 boxes: 7.8 % of the image
    d.text, d.object_mask = None, None
    both = Batch.cat([d, big])
    data = prepare_outliers(both, 32, max_area=0.02)
    assert data["labels"] == ["hole"] * 4, "the large defects must be left out"
    assert torch.equal(data["boxes"], mask_boxes(d.mask))
    for (y0, x0, y1, x1), m in zip(data["boxes"].tolist(), data["masks"]):
        assert (y1 - y0, x1 - x0) == (4, 4) and int(m.sum()) == 16
    with pytest.raises(ValueError, match="max_outlier_area"):
        prepare_outliers(big, 32, max_area=0.02)


# -- step 2: the DCGAN --------------------------------------------------------------------------------
def test_dcgan_layers_and_init():
    """Step 2: G is ConvT-BN-ReLU with a tanh head, D is Conv-(BN)-LeakyReLU(0.2) without BN on its first layer,
    weights N(0, 0.02). Checked to fail: dropping G's BatchNorm or adding BN to D's first layer."""
    from anoplug_eid_gan.networks import dcgan_init
    from torch import nn

    G, D = DCGANGenerator(64, 16, 100), DCGANDiscriminator(64, 16)
    kinds = [type(m) for m in G.net]
    assert kinds[:3] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU] and kinds[-1] is nn.Tanh
    assert kinds.count(nn.BatchNorm2d) == 4 and kinds.count(nn.ConvTranspose2d) == 5  # DCGAN's 64² generator
    dk = [type(m) for m in D.net]
    assert dk[:2] == [nn.Conv2d, nn.LeakyReLU] and dk.count(nn.BatchNorm2d) == 3 and dk.count(nn.Conv2d) == 5
    assert all(m.negative_slope == 0.2 for m in D.net if isinstance(m, nn.LeakyReLU))
    dcgan_init(G, torch.Generator().manual_seed(0))
    w = torch.cat([m.weight.detach().flatten() for m in G.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(float(w.std()) - 0.02) < 0.002
    z = torch.randn(2, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = G(z)
    assert out.shape == (2, 3, 64, 64) and float(out.abs().max()) <= 1 and D(out).shape == (2,)


# -- step 3: the outlier penalty ----------------------------------------------------------------------
def test_penalty_gradient_is_zero_outside_the_crop():
    """Step 3: the penalty sees only the crop (and, by default, only the outlier's pixels in it).

    Checked to fail: computing the difference over the whole image (box indicator replaced by ones)."""
    g = torch.Generator().manual_seed(0)
    fake = torch.rand(2, 3, 16, 16, generator=g).requires_grad_(True)
    real = torch.rand(2, 3, 16, 16, generator=g)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 3:6, 4:8] = 1
    masks[1, :, 10:12, 1:3] = 1
    masks[0, :, 4, 4] = 0  # a hole in the outlier: inside the box, outside the mask
    boxes = mask_boxes(masks)
    for region, inside in (("mask", masks), ("box", box_indicator(boxes, (16, 16)))):
        fake.grad = None
        crop_penalty(fake, real, masks, boxes, weight=0.01, region=region).backward()
        grad = fake.grad.abs().sum(1, keepdim=True)
        assert float(grad[inside == 0].abs().max()) == 0.0, f"{region}: gradient outside the crop"
        assert bool((grad[inside == 1] > 0).all()), f"{region}: no gradient on the crop"
    # its value: λ times the summed absolute difference on the outlier's pixels
    ref = 0.01 * (masks * (fake.detach() - real)).abs().flatten(1).sum(1).mean()
    assert torch.allclose(crop_penalty(fake.detach(), real, masks, boxes, weight=0.01), ref)


def test_penalty_lowers_the_outlier_crop_error():
    """Step 3: the same DCGAN training (seed, steps, data) with λ > 0 reproduces the outliers better than with λ = 0.

    |crop(G(z)) − outlier| is measured on the training outliers' crops of fresh instances.
    Checked to fail: making the ``g_extra`` hook return {} (errors then equal)."""
    defects = tiny_defects()
    data = prepare_outliers(defects, 32)

    def error(lam: float) -> float:
        gen = EIDGAN(**{**TINY, "penalty_weight": lam}).fit(None, defects, steps=80)
        fake = gen.instances(rngs_for(range(16)))
        errs = [crop_error(fake, data["crop_images"][k:k + 1].expand(16, -1, -1, -1),
                           data["crop_masks"][k:k + 1].expand(16, -1, -1, -1), data["crop_boxes"][k:k + 1].expand(16, -1)).mean()
                for k in range(len(data["labels"]))]
        return float(torch.stack(errs).mean())

    with_penalty, without = error(1.0), error(0.0)
    assert with_penalty < 0.7 * without, f"crop error {with_penalty:.3f} with the penalty vs {without:.3f} without"


# -- step 4: generation ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen() -> EIDGAN:
    return fitted(steps=20)


def _boxed(n: int, size: int, y0: int, x0: int, h: int, w: int) -> torch.Tensor:
    m = torch.zeros(n, 1, size, size)
    m[..., y0:y0 + h, x0:x0 + w] = 1
    return m


def test_paste_keeps_pixels_outside_the_region(gen):
    """Step 4 (paste): only the requested region changes, bit for bit elsewhere; the mask lies inside it.

    Checked to fail: pasting the whole G(z) instead of its crop (image = G(z) outside the region)."""
    b = make_toy_batch(4, 64)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    target = (((yy - 26) ** 2 + (xx - 15) ** 2) < 36).float().expand(4, 1, 64, 64).contiguous()  # a disc, not a box
    out = gen.generate(b.with_conditions(target_mask=target), seed=0)
    outside = (target == 0).expand_as(b.image)
    assert torch.equal(out.image[outside], b.image[outside])
    assert bool((out.mask <= target).all()) and float(out.mask.sum()) > 0
    moved = (out.image - b.image).abs().amax(1, keepdim=True)
    assert float(moved[out.mask > 0].min()) > 1 / 255, "a masked pixel moved by one grey level or less"


def test_region_condition_moves_the_defect(gen):
    """Step 4 (paste): the outlier goes where ``boxes`` / ``target_mask`` say (same seed, other region).

    Checked to fail: ignoring the condition (pasting at the training outlier's location)."""
    b = make_toy_batch(2, 64)

    def centroid(mask: torch.Tensor) -> torch.Tensor:
        yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        m = mask[:, 0]
        return torch.stack([(m * yy).sum((1, 2)), (m * xx).sum((1, 2))], 1) / m.sum((1, 2))[:, None]

    left = gen.generate(b.with_conditions(boxes=[[("hole", 0.05, 0.05, 0.25, 0.25)]] * 2), seed=0)
    right = gen.generate(b.with_conditions(boxes=[[("hole", 0.7, 0.6, 0.95, 0.9)]] * 2), seed=0)
    assert bool(left.mask[..., 17:, :].eq(0).all()) and bool(left.mask[..., :, 17:].eq(0).all())
    assert bool(right.mask[..., :38, :].eq(0).all()) and bool(right.mask[..., :, :44].eq(0).all())
    assert float((centroid(right.mask) - centroid(left.mask)).norm(dim=1).min()) > 30
    a = gen.generate(b.with_conditions(target_mask=_boxed(2, 64, 4, 4, 8, 8)), seed=0)
    c = gen.generate(b.with_conditions(target_mask=_boxed(2, 64, 50, 40, 8, 8)), seed=0)
    assert float((centroid(c.mask) - centroid(a.mask)).norm(dim=1).min()) > 40


def test_default_location_is_the_drawn_training_outlier(gen):
    """Step 4 (paste, no condition): the outlier lands in the crop region of the recorded training outlier,
    scaled to the input. Checked to fail: a fixed (centre) location."""
    b = make_toy_batch(4, 64)
    out = gen.generate(b, seed=3)
    for i, s in enumerate(out.samples):
        k = s["outliers"][0]
        y0, x0, y1, x1 = (2 * int(v) for v in gen.outlier_boxes[k])  # 32² model, 64² input
        allowed = torch.zeros(1, 64, 64)
        allowed[:, y0:y1, x0:x1] = 1
        assert bool((out.mask[i] <= allowed).all()), f"sample {i} outside outlier {k}'s crop"


def test_instance_mode_returns_the_generated_instance(gen):
    """Step 4 (instance): the whole G(z) at the input size, mask = the drawn outlier's crop region.
    Checked to fail: returning the pasted image instead."""
    b = make_toy_batch(3, 32)
    seeds = [11, 12, 13]
    gen.params.output = "instance"
    try:
        out = gen.generate(b, seeds=seeds)
        with pytest.raises(Exception, match="output='paste'"):
            gen.generate(b.with_conditions(target_mask=_boxed(3, 32, 2, 2, 4, 4)), seed=0)
    finally:
        gen.params.output = "paste"
    rngs = rngs_for(seeds)
    gen.sample(b, rngs)  # the latent comes after the record's draws
    assert torch.equal(out.image, gen.instances(rngs))
    for i, s in enumerate(out.samples):
        assert torch.equal(out.mask[i], gen._source_region(s["outliers"][0]))


def test_shipped_checkpoint_generates_on_toy_fabric_at_64_and_256():
    """The shipped ``fabric`` checkpoint loads fitted and pastes outliers into toy:fabric normals at both sizes,
    keeping every pixel outside the mask."""
    g = EIDGAN.from_pretrained("fabric")
    assert g.is_fitted and g.resolved.resolution == 64
    for size in (64, 256):
        b = ToyDataset("fabric", "train", size=size, length=4).batch(range(4))
        out = g.generate(b, seed=0)
        assert out.image.shape == b.image.shape and out.mask.shape == (4, 1, size, size)
        outside = (out.mask == 0).expand_as(b.image)
        assert torch.equal(out.image[outside], b.image[outside])
        assert sum(lab != "good" for lab in out.label) >= 3


# -- step 5: the evaluation protocol -----------------------------------------------------------------
def _spotted(b, seed: int):
    g = torch.Generator().manual_seed(seed)
    img = b.image.clone()
    for i in range(len(img)):
        y, x = (int(v) for v in torch.randint(4, 26, (2,), generator=g))
        img[i, :, y:y + 4, x:x + 4] = 0.0
    return img


def test_protocol_keeps_only_generated_instances_with_outliers():
    """Step 5: detector A (trained on the real folds) keeps the generated instances that contain an outlier and
    drops those that do not; detector B is retrained with the kept ones. Checked to fail: keeping every instance."""
    normals = make_toy_batch(24, 32, seed=1)
    defects = _spotted(make_toy_batch(12, 32, seed=2), 0)
    with_outliers = _spotted(make_toy_batch(20, 32, seed=3), 1)
    without = make_toy_batch(20, 32, seed=4).image
    for det in ("knn", "linear"):
        good = P.availability_protocol(normals.image, defects, with_outliers, detector=det, k=3, size=32)
        bad = P.availability_protocol(normals.image, defects, without, detector=det, k=3, size=32)
        assert good["availability"] >= 0.6 and bad["availability"] <= 0.25, (det, good["availability"], bad["availability"])
        assert len(good["folds"]) == 3 and 0 <= good["augmented_f1"] <= 1 and 0 <= good["baseline_error_escape"] <= 1
    y = torch.tensor([0] * 10 + [1] * 5)
    folds = P.stratified_folds(y, 3, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(folds).tolist()) == list(range(15)), "folds must partition the data"
    assert all(int((y[f] == 1).sum()) >= 1 and int((y[f] == 0).sum()) >= 3 for f in folds), "folds must be stratified"
