"""AnoGen: the conformance kit on a tiny random stack, then one test per paper step (each fails when the step is removed)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from anoplug.conditions import ConditionError
from anoplug.testing import LearnedGeneratorConformance, make_toy_anomalies, make_toy_batch
from anoplug.types import Batch

pytest.importorskip("diffusers")

from anoplug_anogen import anogen as A  # noqa: E402
from anoplug_anogen import boxes as B  # noqa: E402

FAST = {"base_model": "tiny-random", "steps": 3, "batch_size": 2, "fit_steps": 2}


def two_types() -> Batch:
    """Toy defects of two types (dark rectangles with masks)."""
    return Batch.cat([make_toy_anomalies(4, 64, seed=5, label="scratch"), make_toy_anomalies(4, 64, seed=6, label="hole")])


class TestAnoGenConformance(LearnedGeneratorConformance):
    generator_name = "anogen"
    generator_class = A.AnoGen
    params = FAST
    bad_params = {"steps": 0, "eta": 1.5, "rotate": "sideways", "min_foreground": 1.5, "prompt": "no token"}
    entry_module = "anoplug_anogen.plugin"
    box_label = "scratch"

    def fit_data(self):
        return None, two_types()

    def test_shipped_checkpoints_load_and_generate(self, monkeypatch) -> None:
        """The kit's check of every shipped checkpoint, with DDIM cut to 2 steps after loading: the same code path,
        but 50 guided steps per checkpoint would take most of this file's time budget."""
        load = A.AnoGen.load.__func__

        def fast(cls, directory):
            gen = load(cls, directory)
            gen.params.steps = 2
            return gen

        monkeypatch.setattr(A.AnoGen, "load", classmethod(fast))
        super().test_shipped_checkpoints_load_and_generate()


@pytest.fixture(scope="module")
def fitted() -> A.AnoGen:
    """Two types fitted for one step each on the tiny random stack (for the box tests)."""
    return A.AnoGen(**FAST).fit(None, two_types(), steps=1)


@pytest.fixture(scope="module")
def tiny_base_gen() -> A.AnoGen:
    """The shipped capsule checkpoint on the trained tiny base, with few DDIM steps."""
    g = A.AnoGen.from_pretrained("capsule")
    g.params.steps = 8
    return g


@pytest.fixture(scope="module")
def capsules() -> Batch:
    from anoplug.data.toy import ToyDataset

    return ToyDataset("capsule", split="train", size=64, length=2).batch(range(2))


# -- stage 1: the masked one-token inversion -----------------------------------------------------------------------
class _PointwiseUNet(torch.nn.Module):
    """A stand-in denoiser whose output at a position sees only that position's latent (and the text): it makes
    "pixels outside the mask" a clean notion, which a real UNet (convolutions, attention) mixes across positions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(4, 4, 1)
        self.text = torch.nn.Linear(dim, 4)

    def forward(self, x, t, encoder_hidden_states):
        out = self.mix(x) + self.text(encoder_hidden_states.mean(1))[:, :, None, None]
        return dataclasses.make_dataclass("Out", ["sample"])(out)


def _vector_grad(gen: A.AnoGen, data: dict) -> torch.Tensor:
    gen.vectors.rows[0].grad = None
    loss = gen.training_step(data, 0, torch.Generator().manual_seed(3))["loss"]
    (grad,) = torch.autograd.grad(loss, [gen.vectors.rows[0]])
    return grad


def test_inversion_loss_is_masked_pixels_outside_the_defect_do_not_reach_the_vector():
    """Changing the latents outside the defect mask leaves the vector's gradient unchanged; with the mask
    removed (all ones) the same change moves it. Catches an unmasked loss."""
    gen = A.AnoGen(**FAST)
    data = gen.build(None, make_toy_anomalies(3, 64, seed=5), torch.Generator().manual_seed(0))
    gen.planned_steps(None, data)
    parts = data["parts"]
    torch.manual_seed(0)
    data["parts"] = dataclasses.replace(parts, unet=_PointwiseUNet(parts.text_encoder.config.hidden_size))
    noisy = dict(data, z=[data["z"][0] + 5 * (1 - data["m"][0])], zf=[data["zf"][0] + 5 * (1 - data["mf"][0])])
    assert 0 < float(data["m"][0].mean()) < 1
    assert torch.allclose(_vector_grad(gen, data), _vector_grad(gen, noisy), atol=1e-7)
    ones = {"m": [torch.ones_like(data["m"][0])], "mf": [torch.ones_like(data["mf"][0])]}
    assert not torch.allclose(_vector_grad(gen, {**data, **ones}), _vector_grad(gen, {**noisy, **ones}), atol=1e-6)


def test_loss_mask_rule_is_the_official_dilation():
    """bilinear to latent size, then every non-zero value is 1: a 2-px defect survives at 1/4 scale ('half' drops it)."""
    m = torch.zeros(1, 1, 64, 64)
    m[..., 30:32, 30:32] = 1
    assert float(A.latent_loss_mask(m, (16, 16), "nonzero").sum()) >= 1
    assert float(A.latent_loss_mask(m, (16, 16), "half").sum()) == 0


def test_each_type_is_its_own_inversion_and_only_the_vectors_train():
    """Two types fitted together give each the vector a lone fit of that type gives (own vector, own optimiser;
    a shared AdamW would keep moving a finished type by momentum and weight decay), and the base table is frozen."""
    both = A.AnoGen(**FAST)
    table = both._embedding(both.parts).base.weight.detach().clone()
    both.fit(None, two_types(), steps=3)
    alone = A.AnoGen(**FAST).fit(None, make_toy_anomalies(4, 64, seed=6, label="hole"), steps=3)
    assert both.types == ["hole", "scratch"] and [h["type"] for h in both.history] == ["hole"] * 3 + ["scratch"] * 3
    assert torch.equal(both.vectors.rows[0], alone.vectors.rows[0])
    init = table[both.parts.tokenizer("defect", add_special_tokens=False).input_ids[0]]
    assert all(not torch.equal(r.detach(), init) for r in both.vectors.rows)
    assert torch.equal(both._embedding(both.parts).base.weight, table)


# -- stage 2a: boxes ------------------------------------------------------------------------------------------------
def _share(box: dict, fg: torch.Tensor) -> float:
    return float((B.rasterise(box, *fg.shape)[0] * fg).sum()) / (box["w"] * box["h"])


def test_boxes_keep_more_than_75_percent_on_the_object():
    """On an object filling the left third, every drawn box lies > 75 % on it; without the rule many do not."""
    fg = torch.zeros(64, 64)
    fg[:, :22] = 1
    r = B.BoxRange((0.1, 0.2), (0.1, 0.2), True)
    kept = [B.draw_boxes(torch.Generator().manual_seed(s), r, fg) for s in range(30)]
    assert all(b["accepted"] and _share(b, fg) > 0.75 for b in kept)
    free = [B.draw_boxes(torch.Generator().manual_seed(s), r, fg, min_foreground=-1.0) for s in range(30)]  # no rule
    assert sum(_share(b, fg) <= 0.75 for b in free) > 10
    off = B.draw_boxes(torch.Generator().manual_seed(0), r, torch.zeros(64, 64), max_draws=128)
    assert not off["accepted"] and off["draws"] == 128  # nothing on an empty object: the best is kept, and says so


def test_box_sizes_follow_the_range_and_every_box_is_rotated_by_default():
    """Width and height are drawn in range × side; the official code rotates every box (its flags are strings)."""
    r = B.BoxRange((0.2, 0.25), (0.1, 0.15), False)
    fg = torch.ones(64, 64)
    rec = [B.draw_boxes(torch.Generator().manual_seed(s), r, fg) for s in range(20)]
    assert all(12 <= b["w"] <= 16 and 6 <= b["h"] <= 9 for b in rec)
    assert any(b["angle"] not in (0, 180) for b in rec)
    flat = [B.draw_boxes(torch.Generator().manual_seed(s), r, fg, rotate=False) for s in range(5)]
    assert all(b["angle"] == 0 for b in flat)
    gen = A.AnoGen(**FAST, rotate="table")
    gen.types, gen.ranges = ["hole"], {"hole": r}  # sample() needs the types and their ranges only
    assert all(s["boxes"][0]["angle"] == 0 for s in gen.sample(make_toy_batch(3), [torch.Generator() for _ in range(3)]))


def test_object_mask_is_the_foreground_template(fitted):
    """Drawn boxes follow the batch's object_mask: moved object, moved boxes."""
    gen = fitted
    b = make_toy_batch(8)
    left, right = torch.zeros_like(b.object_mask), torch.zeros_like(b.object_mask)
    left[..., :, :24], right[..., :, 40:] = 1, 1
    rngs = lambda: [torch.Generator().manual_seed(i) for i in range(8)]  # noqa: E731
    on_left = gen.box_masks(gen.sample(dataclasses.replace(b, object_mask=left), rngs()), 64, 64)
    on_right = gen.box_masks(gen.sample(dataclasses.replace(b, object_mask=right), rngs()), 64, 64)
    assert float((on_left * left).sum() / on_left.sum()) > 0.75 and float((on_right * right).sum() / on_right.sum()) > 0.75


# -- stage 2b: box-blended DDIM with CFG ---------------------------------------------------------------------------
def test_blending_keeps_the_pixels_outside_the_box(tiny_base_gen, capsules, monkeypatch):
    """Outside the box the output stays at the source (VAE reconstruction error only); without the blend it does not."""
    from anoplug.diffusion import sampling as S

    out = tiny_base_gen.generate(capsules, seed=0)
    outside = (out.mask == 0).expand_as(out.image)
    kept = float((out.image - capsules.image).abs()[outside].mean())

    class NoBlend(S.Hook):
        def __init__(self, *a, **k):
            pass

    monkeypatch.setattr(S, "BlendBefore", NoBlend)
    free = tiny_base_gen.generate(capsules, seed=0)
    assert kept < 0.05 < float((free.image - capsules.image).abs()[outside].mean()), kept


def test_guidance_10_runs_an_unconditional_pass_and_changes_the_defect(tiny_base_gen, capsules, monkeypatch):
    """CFG 10 doubles each UNet call ([uncond; cond]) and changes the box's content against CFG 1 (one pass)."""
    parts = tiny_base_gen.parts
    sizes: list[int] = []
    orig = parts.unet.forward
    monkeypatch.setattr(parts.unet, "forward", lambda x, *a, **k: (sizes.append(len(x)), orig(x, *a, **k))[1])
    guided = tiny_base_gen.generate(capsules, seed=0)
    assert set(sizes) == {4}
    sizes.clear()
    tiny_base_gen.params.guidance = 1.0
    try:
        plain = tiny_base_gen.generate(capsules, seed=0)
    finally:
        tiny_base_gen.params.guidance = 10.0
    assert set(sizes) == {2}
    inside = (guided.mask > 0).expand_as(guided.image)
    assert float((guided.image - plain.image).abs()[inside].mean()) > 0.02


# -- the label: the box, weak; the refined mask -------------------------------------------------------------------
def test_the_mask_is_the_box_flagged_weak_and_the_refined_mask_is_box_and_change(tiny_base_gen, capsules):
    out = tiny_base_gen.generate(capsules, seed=1)
    for i, m in enumerate(out.meta):
        assert m["mask_kind"] == "box" and m["weak_mask"] and m["sample"]["weak"] is True
        box = tiny_base_gen.box_masks([m["sample"]], 64, 64)[0]
        assert torch.equal(out.mask[i], box)
    refined = out.extras["refined_mask"]
    changed = (out.image - capsules.image).abs().amax(1, keepdim=True) > tiny_base_gen.params.refine_threshold
    assert torch.equal(refined, (out.mask.bool() & changed).float()) and float(refined.sum()) > 0
    tiny_base_gen.params.paste_background = True  # extension: the outside of the box bit-exact
    try:
        pasted = tiny_base_gen.generate(capsules, seed=1)
    finally:
        tiny_base_gen.params.paste_background = False
    outside = (pasted.mask == 0).expand_as(pasted.image)
    assert torch.equal(pasted.image[outside], capsules.image[outside]) and not torch.equal(out.image, pasted.image)


def test_boxes_and_defect_type_conditions(tiny_base_gen, capsules):
    """A given box is the mask and its label the type; a sample's boxes share one type; a clash is an error."""
    t = tiny_base_gen.types
    b = capsules.with_conditions(boxes=[[(t[0], 0.3, 0.3, 0.5, 0.6)], [(t[1], 0.4, 0.2, 0.6, 0.4)]])
    out = tiny_base_gen.generate(b, seed=0)
    assert out.label == [t[0], t[1]]
    assert float(out.mask[0, 0, 19:38, 19:32].min()) == 1 and float(out.mask[0].sum()) == 19 * 13
    with pytest.raises(ConditionError, match="share one type"):
        tiny_base_gen.generate(capsules.with_conditions(boxes=[[(t[0], .1, .1, .3, .3), (t[1], .5, .5, .7, .7)]] * 2))
    with pytest.raises(ConditionError, match="differs"):
        tiny_base_gen.generate(b.with_conditions(defect_type=[t[1], t[1]]), seed=0)
    typed = tiny_base_gen.generate(capsules.with_conditions(defect_type=[t[2], t[2]]), seed=0)
    assert typed.label == [t[2], t[2]]


def test_cli_generates_with_boxes_and_records_the_weak_box_in_the_manifest(tiny_base_gen, tmp_path):
    from anoplug.cli import main

    tiny_base_gen.save(tmp_path / "gen")  # the shipped capsule vectors, with 8 DDIM steps
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([[["crack", 0.3, 0.3, 0.5, 0.5]]]))
    rc = main(["generate", "anogen", "--load", str(tmp_path / "gen"), "--data", "toy:capsule", "-n", "1", "--size",
               "64", "--n-train", "0", "--boxes", str(boxes), "--out", str(tmp_path / "out"), "-q"])
    assert rc == 0
    rec = json.loads((tmp_path / "out" / "capsule" / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["label"] == "crack" and rec["sample"]["weak"] is True and rec["sample"]["mask_kind"] == "box"


def test_presets_are_the_official_defaults_and_a_shorter_fit():
    paper = A.AnoGen.preset("paper").params
    assert (paper.shots, paper.fit_steps, paper.lr, paper.batch_size, paper.init_word, paper.steps, paper.eta,
            paper.guidance, paper.prompt, paper.min_foreground) == (3, 6100, 2e-2, 4, "defect", 50, 0.0, 10.0, "*", 0.75)
    cpu = A.AnoGen.preset("cpu").params
    assert cpu.fit_steps == 50 and cpu.model_dump(exclude={"fit_steps"}) == paper.model_dump(exclude={"fit_steps"})
    with pytest.raises(ValueError, match="unknown preset"):
        A.AnoGen.preset("fast")
