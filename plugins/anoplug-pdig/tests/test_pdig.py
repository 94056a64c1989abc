"""PDIG: the conformance kit (learned variant) and one mechanism test per paper step.

Each mechanism test says in its docstring which removal it catches. The end-to-end tests use
the shipped ``elcells`` checkpoint on the bundled tiny base (offline) and the plugin's own
EL-like cell-array data (:mod:`anoplug_pdig.elcells`).
"""

from __future__ import annotations

import pytest
import torch
from anoplug_pdig import elcells, tidsc
from anoplug_pdig.method import Pdig, concept_token

from anoplug.testing import LearnedGeneratorConformance

FAST = {"fit_steps": 2, "steps": 2, "guidance": 1.0, "batch_size": 2}


class TestPdig(LearnedGeneratorConformance):
    generator_class = Pdig
    params = FAST
    bad_params = {"lr": 0.0, "guidance": 0.5, "change_threshold": 1.5}
    entry_module = "anoplug_pdig.plugin"

    def fit_data(self):
        n, d = elcells.dataset("train", n_normal=2, n_defect=3, size=64)
        return n, d

    def condition_variants(self, name: str, batch):
        if name == "defect_type":
            return {"defect_type": ["crack"] * len(batch)}, {"defect_type": ["finger"] * len(batch)}
        return super().condition_variants(name, batch)


# -- data ---------------------------------------------------------------------------------------------
def test_elcells_masks_are_exact_and_deterministic():
    """The plugin's own data: a defect changes pixels only inside its mask, and a sample is its seed's alone.

    Catches a renderer whose mask misses painted pixels (or marks unpainted ones), or whose
    sample depends on the samples rendered before it."""
    for i, kind in enumerate(elcells.DEFECTS):
        img, mask, label = elcells.render_sample(100 + i, kind=kind)
        normal, empty, good = elcells.render_sample(100 + i)
        assert label == kind and good == "good" and not empty.any()
        diff = (img - normal).abs().amax(0, keepdim=True) > 0
        assert bool(mask.bool().any()) and bool((diff <= mask.bool()).all()), kind
        assert float(diff[mask.bool()].float().mean()) > 0.5, kind  # most of the mask is visibly painted
    a = elcells.defects(3, seed=4).image
    b = elcells.defects(1, seed=4, start=10_002, kinds=("finger",)).image
    assert torch.equal(a[2], b[0])


# -- the shipped checkpoint -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    return Pdig.from_pretrained("elcells")


@pytest.fixture(scope="module")
def cells():
    return elcells.normals(2, split="test", seed=3)


def _like(g: Pdig, **changes) -> Pdig:
    """The same learned tensors under other generation parameters."""
    return g.with_generation_params(**changes)


def _target(n: int, size: int = 64) -> torch.Tensor:
    m = torch.zeros(n, 1, size, size)
    m[..., 14:30, 10:40] = 1
    return m


# -- 1. SCE ------------------------------------------------------------------------------------------------
def test_sce_rows_are_what_the_concept_token_reads(shipped, cells):
    """SCE: the concept token's input embedding is the prior + the learned residual, and it changes the output.

    Catches SCE not being injected (the token would read the tokenizer's init row, and changing
    the residual would change nothing) and a residual that is not trained (zero)."""
    g = _like(shipped, steps=4, tidsc_iterations=0)
    parts = g.parts
    emb = parts.text_encoder.get_input_embeddings()
    ids = parts.tokenizer.convert_tokens_to_ids([concept_token(k) for k in range(len(g.types))])
    with emb.injected(g.sce.rows()[None], ids):
        row = emb(torch.tensor([[ids[0]]]))[0, 0]
    assert torch.allclose(row, g.sce.prior[0] + g.sce.residual[0])
    assert float(g.sce.residual.detach().abs().max()) > 0, "the shipped SCE residual is untrained"
    b = cells.with_conditions(defect_type=["crack", "crack"], target_mask=_target(2))
    out = g.generate(b, seed=0)
    saved = g.sce.residual.detach().clone()
    try:
        with torch.no_grad():
            g.sce.residual.zero_()  # the text prior alone
        prior_only = g.generate(b, seed=0)
    finally:
        with torch.no_grad():
            g.sce.residual.copy_(saved)
    assert float((out.image - prior_only.image).abs().max()) > 1e-3


# -- 2. LISA -----------------------------------------------------------------------------------------------
def test_lisa_style_branch_is_the_only_change_and_it_matters(shipped):
    """LISA: at scale 0 the adaptor reproduces the base UNet exactly; at scale 1 its style branch changes ε,
    and differently for different defect types' style codes.

    Catches a style branch that is not wired into the attention (no change at scale 1), one that
    also alters the text attention (a change at scale 0), and style codes that are ignored."""
    from anoplug_pdig.lisa import installed

    g = shipped
    parts = g.parts
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    with torch.no_grad():
        text = g._encode(parts, [g._prompt(0), g._prompt(0)])
        base = parts.unet(x, t, encoder_hidden_states=text).sample
        ctx = g._context(parts, text, torch.tensor([0, 1]))
        try:
            with installed(parts.unet, g.lisa):
                g.lisa.set_scale(0.0)
                off = parts.unet(x, t, encoder_hidden_states=ctx).sample
                g.lisa.set_scale(1.0)
                on = parts.unet(x, t, encoder_hidden_states=ctx).sample
        finally:
            g.lisa.set_scale(g.params.style_scale)
        again = parts.unet(x, t, encoder_hidden_states=text).sample  # the originals are back
    assert torch.allclose(off, base, atol=1e-5)
    assert torch.equal(again, base)
    assert float((on - base).abs().mean()) > 1e-3
    assert float((on[0] - on[1]).abs().mean()) > 1e-4  # same x and text, other type's style tokens


# -- 3. TIDSC ----------------------------------------------------------------------------------------------
def test_positional_consistency_pulls_the_concept_attention_into_the_mask(shipped, cells):
    """TIDSC (text space): repeated steps on the latent lower the concept tokens' attention share outside the mask.

    Catches the positional loss being dropped from the objective (no losses recorded), the
    latent update being removed, or the loss reading the wrong token columns (no decrease)."""
    g = _like(shipped, steps=4, tidsc_fraction=0.25, tidsc_iterations=4, smooth_weight=0.0, guidance=1.0,
              position_weight=1.0, tidsc_step=10_000.0)
    g.generate(cells[[0]].with_conditions(defect_type=["finger"], target_mask=_target(1)), seed=0)
    losses = [v for _, v in g.last_tidsc]
    assert len(losses) == 4
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.003, losses  # small: the tiny base's attention is nearly uniform


def test_positional_loss_is_the_share_outside_the_mask():
    """The loss itself: 0 when all attention is inside the mask, 1 when all is outside."""
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :] = 1
    inside = torch.zeros(1, 64, 3)
    inside[0, :32, 1] = 1.0
    outside = torch.zeros(1, 64, 3)
    outside[0, 32:, 1] = 1.0
    cols = torch.tensor([[False, True, False]])
    assert float(tidsc.positional_consistency_loss({"a": inside}, m, cols, (8, 8))) == pytest.approx(0.0)
    assert float(tidsc.positional_consistency_loss({"a": outside}, m, cols, (8, 8))) == pytest.approx(1.0)


def test_boundary_smoothing_lowers_the_gradient_across_the_region_boundary(shipped, cells):
    """TIDSC (image space): with the smoothing term the output's gradient on the region boundary is lower.

    Catches the smoothing term being dropped (same output as without it) or acting away from
    the boundary band."""
    b = cells.with_conditions(defect_type=["dark_cell", "dark_cell"], target_mask=_target(2))
    kw = {"steps": 8, "position_weight": 0.0, "tidsc_fraction": 1.0, "region_dilation": 2}
    plain = _like(shipped, tidsc_iterations=0, **kw).generate(b, seed=1)
    smooth = _like(shipped, tidsc_iterations=2, smooth_weight=50.0, tidsc_step=50.0, **kw).generate(b, seed=1)
    region = torch.nn.functional.max_pool2d(_target(2), 5, stride=1, padding=2)
    g_plain = tidsc.boundary_gradient(plain.image, region, 1)
    g_smooth = tidsc.boundary_gradient(smooth.image, region, 1)
    assert g_smooth < 0.9 * g_plain, (g_plain, g_smooth)


# -- 4. region and mask ------------------------------------------------------------------------------------
def test_prompt_names_the_type_and_mask_covers_the_change(shipped, cells):
    """A prompt naming a fitted type picks it (typed condition from text); the mask holds every changed pixel.

    Catches a prompt that is ignored for the type and a mask that misses changed pixels."""
    g = _like(shipped, steps=4)
    out = g.generate(cells.with_conditions(prompt=["an EL image of a cell with a crack",
                                                   "a solar cell with a finger interruption"]), seed=2)
    assert out.label == ["crack", "finger"]
    changed = (out.image != cells.image).any(1, keepdim=True)
    assert bool((changed <= out.mask.bool()).all())
    assert "<pdig_" in out.meta[0]["prompt"]


# -- generation-time parameters on the shipped checkpoint ---------------------------------------------------
def test_shipped_checkpoint_takes_generation_params_and_refuses_training_ones(shipped, tmp_path, capsys):
    """A preset changed on the shipped model brings its sampling settings; training parameters are refused.

    Catches ``-p preset=cpu`` renaming the preset but keeping the checkpoint's 50 steps (the preset
    validator fills absent fields only, and a saved model has them all), and a weight-shaping
    parameter (LISA's style tokens, the learning rate) let through in Python or on the command line."""
    from anoplug.cli import main
    from anoplug.params import ParamError

    g = Pdig.from_pretrained("elcells")
    assert (g.params.steps, g.params.guidance) == (50, 7.5)
    g.with_generation_params(preset="cpu")
    assert (g.params.preset, g.params.steps, g.params.guidance) == ("cpu", 20, 5.0)
    g.with_generation_params(preset="cpu", steps=4)  # an explicit value still wins
    assert g.params.steps == 4 and g.is_fitted
    with pytest.raises(ParamError, match="style_tokens"):
        g.with_generation_params(style_tokens=8)
    code = main(["generate", "pdig", "--data", "toy:tile", "--size", "64", "-n", "1", "--out", str(tmp_path / "o"),
                 "-q", "-p", "lr=0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "--param lr cannot be combined" in err and "tidsc_iterations" in err, err
