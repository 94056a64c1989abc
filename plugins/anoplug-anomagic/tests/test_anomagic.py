"""Anomagic: the learned conformance kit plus one mechanism test per paper step (each says what removal it catches)."""

from __future__ import annotations

import pytest
import torch
from anoplug_anomagic.inpaint import LegacyKnownRegion
from anoplug_anomagic.masks import adaptive_mask, foreground
from anoplug_anomagic.method import Anomagic
from anoplug_anomagic.modules import MaskedSelfAttention
from anoplug_anomagic.refine import Refined, accepted
from anoplug_anomagic.retrieval import _concat

from anoplug.data.toy import render
from anoplug.testing import LearnedGeneratorConformance

FAST = {"fit_steps": 2, "steps": 4, "max_attempts": 2, "contrast_backbone": "pixel", "batch_size": 2}


def toy_anomalies(cats=("metal", "capsule"), n=6):
    return _concat([render(c, "test", i, 0, 64) for c in cats for i in range(n)])


class TestAnomagic(LearnedGeneratorConformance):
    generator_class = Anomagic
    params = FAST
    bad_params = {"lr": 0.0, "strength": 2.0}
    entry_module = "anoplug_anomagic.plugin"
    replay_needs_seeds = True

    def fit_data(self):
        from anoplug.testing import make_toy_batch

        return make_toy_batch(self.batch_size, self.image_size, seed=10), toy_anomalies()


@pytest.fixture(scope="module")
def fitted():
    return Anomagic(**FAST).fit(None, toy_anomalies(("metal", "capsule", "wood")))


def test_keys_outside_the_reference_mask_get_no_attention():
    """Catches removing the −1e6 key mask of the visual prompt: attention leaks onto the product around the defect."""
    torch.manual_seed(0)
    att = MaskedSelfAttention(16, 8)
    with torch.no_grad():
        att.gamma.fill_(1.0)
    x = torch.randn(2, 64, 16)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1
    out = att(x, mask)
    outside = (mask.flatten(1) == 0)
    assert float(att.last_weights[outside[:, None, :].expand_as(att.last_weights)].max()) == 0.0
    # changing the tokens outside the mask changes no in-mask output (the residual there is the token itself)
    y = x.clone()
    y[outside] += 5.0
    out2 = att(y, mask)
    inside = ~outside
    assert torch.allclose(out[inside], out2[inside], atol=1e-5)


def test_heldout_category_never_enters_training_or_retrieval():
    """Catches dropping the hold-out: the held-out category's defects would be trained on or retrieved (not zero-shot)."""
    g = Anomagic(**{**FAST, "holdout": ["capsule"]})
    anomalies = toy_anomalies(("metal", "capsule", "wood"))
    data = g.build(None, anomalies, torch.Generator().manual_seed(0))
    n_kept = sum(1 for lab, m in zip(anomalies.label, anomalies.meta) if lab != "good" and m["category"] != "capsule")
    assert len(data["z0"]) == n_kept
    assert "capsule" not in g.trained_categories and "capsule" not in g.corpus().categories
    r = g.retriever()
    target = render("metal", "train", 0, 0, 64).image[0]
    for s in range(20):  # the target's own category is excluded too
        k, _ = r.pick(target, "metal", None, torch.Generator().manual_seed(s))
        assert r.corpus.categories[k] == "wood"


def test_acceptance_rule_retries_until_accepted(fitted):
    """Catches removing the retry loop or the quality/coverage rule: an impossible rule must use every attempt."""
    b = _concat([render("nut", "train", i, 0, 64) for i in range(2)])
    never = fitted.with_generation_params(min_quality=1.0, max_attempts=3)
    out = never.generate(b, seed=0)
    assert [m["sample"]["attempts"] for m in out.meta] == [3, 3]
    assert not any(m["sample"]["accepted"] for m in out.meta)
    easy = fitted.with_generation_params(min_quality=0.0, min_coverage=0.0, max_attempts=3)
    out = easy.generate(b, seed=0)
    assert [m["sample"]["attempts"] for m in out.meta] == [1, 1]
    r = Refined(mask=torch.zeros(2, 1, 4, 4), flagged=torch.zeros(2, 1, 4, 4), quality=torch.tensor([0.69, 0.7]),
                coverage=torch.tensor([0.01, 0.0009]))
    assert accepted(r).tolist() == [False, False]


def test_inpaint_loop_keeps_the_known_region(fitted):
    """Catches removing the legacy re-noise-and-paste: the latent outside the target mask would drift from the source."""
    b = render("nut", "train", 0, 0, 64)
    z0 = fitted.parts.encode_image(b.image)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:10, 4:10] = 1
    ctx = torch.zeros(1, 1 + 256, 64)
    rng = [torch.Generator().manual_seed(0)]
    z = fitted._inpaint(z0, m, ctx, ctx, rng)
    assert torch.equal(z[..., m[0, 0] == 0], z0[..., m[0, 0] == 0])
    assert not torch.allclose(z[..., m[0, 0] == 1], z0[..., m[0, 0] == 1])
    off = fitted.with_generation_params(known_region=False)
    z2 = off._inpaint(z0, m, ctx, ctx, [torch.Generator().manual_seed(0)])
    assert (z2 - z0)[..., m[0, 0] == 0].abs().max() > 1e-3
    fitted.with_generation_params(known_region=True)
    assert isinstance(LegacyKnownRegion(z0, 1 - m, z0).final(z0), torch.Tensor)


def test_only_the_last_four_tokens_take_the_ip_branch(fitted):
    """Catches 'fixing' the official quirk: the IP processors must split off exactly the last 4 of the 1 + 4·P tokens."""
    procs = list(fitted.adapter.layers)
    assert procs and all(p.num_tokens == 4 for p in procs)
    grid = fitted._grid(render("metal", "test", 1, 0, 64).image)
    assert fitted._tokens(grid, None).shape[1] == 4 * grid.shape[1]


def test_noise_loss_only_inside_the_anomaly_mask(fitted):
    """Catches dropping the mask from the loss: with an empty anomaly mask the loss must be exactly zero."""
    data = fitted.build(None, toy_anomalies(("metal",), 4), torch.Generator().manual_seed(0))
    data["mask"] = torch.zeros_like(data["mask"])
    assert float(fitted.training_step(data, 0, torch.Generator().manual_seed(0))) == 0.0


def test_creatmask_stays_on_the_foreground():
    """Catches dropping the Otsu foreground intersection: shapes would land on the background."""
    img = render("nut", "train", 0, 0, 64).image[0]
    fg = foreground(img)
    for s in range(3):
        m, tries = adaptive_mask(fg, torch.Generator().manual_seed(s))
        on = (m > 0)
        assert on.any() and tries >= 1
        # at most the 1–5 px dilation lies off the foreground
        assert (on & (fg == 0)).sum() <= 0.35 * on.sum()


def test_zero_shot_on_a_category_never_seen():
    """Done-when: the shipped model (nut held out) paints another product's defect on a nut, with a refined mask."""
    g = Anomagic.from_pretrained()
    assert "nut" in g.params.holdout and "nut" not in g.trained_categories
    b = _concat([render("nut", "train", i, 0, 64) for i in range(2)]).with_conditions(defect_type=["scratch", "crack"])
    out = g.with_generation_params(max_attempts=2).generate(b, seed=0)
    for m in out.meta:
        assert m["sample"]["reference_category"] != "nut"
    assert out.mask.sum() > 0
    assert bool((out.mask <= out.input_mask).all())  # the refined mask lies inside the input mask
