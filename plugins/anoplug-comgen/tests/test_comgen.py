"""ComGEN: the conformance kit (learned variant) and one mechanism test per paper step.

Each mechanism test says in its docstring which removal it catches. The end-to-end tests use
the shipped ``tray`` checkpoint on the bundled tiny base (offline).
"""

from __future__ import annotations

import pytest
import torch
from anoplug_comgen import components as C
from anoplug_comgen.method import COMPONENT, DEFECT_TYPES, Comgen

from anoplug.testing import LearnedGeneratorConformance

FAST = {"fit_steps": 2, "steps": 2, "guidance": 1.0, "memory_size": 4, "batch_size": 2}


class TestComgen(LearnedGeneratorConformance):
    generator_class = Comgen
    params = FAST
    bad_params = {"lr": 0.0, "guidance": 0.5, "residual_threshold": 1.5}
    entry_module = "anoplug_comgen.plugin"

    def condition_variants(self, name: str, batch):
        if name == "defect_type":
            return {"defect_type": ["missing"] * len(batch)}, {"defect_type": ["extra"] * len(batch)}
        return super().condition_variants(name, batch)


# -- data ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tray():
    from anoplug.data import open_dataset

    return open_dataset("toy:tray", split="train", size=64, seed=1, length=8).all()  # normals never trained on


@pytest.fixture(scope="module")
def shipped():
    return Comgen.from_pretrained("tray")


def _like(shipped, **changes):
    """The shipped generator with some parameters changed (same learned tensors)."""
    g = Comgen(**{**shipped.params.model_dump(), **changes})
    g.vectors, g.state, g._fitted = shipped.vectors, shipped.state, True
    return g


def _records(g, batch):
    """One edit of each type on the high-contrast parts (blue block, red cap; a washer is nearly the
    tray's colour, its change is faint at 64 px), replayed through ``samples``."""
    recs = []
    for i, kind in enumerate(DEFECT_TYPES):
        img, fg = g._inputs(batch[[i]], g.parts)
        inst, types = g._parts_of(img[0], fg[0])
        colour = torch.stack([img[0][:, m].mean(1) for m in inst])
        blue, red = int((colour[:, 2] - colour[:, 0]).argmax()), int((colour[:, 0] - colour[:, 2]).argmax())
        dest = list(g._destination(fg, torch.Generator().manual_seed(i)))
        recs.append({"missing": {"instances": [blue]},
                     "extra": {"instances": [], "new_type": int(types[blue]), "destination": dest},
                     "misplaced": {"instances": [red], "destination": dest},
                     "swapped": {"instances": sorted([red, blue])}}[kind] | {"defect_type": kind, "template": 0})
    return recs


@pytest.fixture(scope="module")
def edits(shipped, tray):
    """One sample of each logical type on held-out normals, with the shipped settings."""
    b = tray[[0, 1, 2, 3]]
    raw = _like(shipped, paste_background=False).generate(b, seeds=[0, 1, 2, 3], samples=_records(shipped, b))
    out = raw.clone()  # what paste_background=True returns (the kit checks the paste itself)
    out.image = torch.where(raw.mask.expand_as(raw.image) > 0.5, raw.image, b.image)
    out.raw = raw
    return shipped, b, out


def _footprint(gen, batch, i, record):
    """The changed components' footprints (no dilation) of sample ``i``, from its record."""
    img, fg = gen._inputs(batch[[i]], gen.parts)
    inst, types = gen._parts_of(img[0], fg[0])
    regs = Comgen(**{**gen.params.model_dump(), "region_dilation": 0})
    regs.vectors, regs.state = gen.vectors, gen.state
    return torch.stack([r[0] for r in regs._regions(record, inst, types, 64)]).amax(0)


# -- 1. components ---------------------------------------------------------------------------------
def test_components_are_grouped_by_type(tray):
    """Catches: no clustering (every instance one type) or clustering by position instead of look.

    On the tray, the slots that hold the same part (the two washers, the two blue blocks) must
    get the same type and different parts different types.
    """
    from anoplug.data.toy_tray import LAYOUT, SLOTS

    feats, kinds = [], []
    for i in range(len(tray)):
        inst = C.instances(tray.object_mask[i, 0])
        feats.append(C.instance_features(tray.image[i], inst))
        for m in inst:
            ys, xs = torch.nonzero(m, as_tuple=True)
            cx, cy = float(xs.float().mean()) / 64, float(ys.float().mean()) / 64
            kinds.append(LAYOUT[min(range(6), key=lambda j: (SLOTS[j][0] - cx) ** 2 + (SLOTS[j][1] - cy) ** 2)])
    f = torch.cat(feats)
    _, lab = C.kmeans((f - f.mean(0)) / f.std(0), 4, torch.Generator().manual_seed(0))
    by_kind = {k: {int(x) for x, kk in zip(lab, kinds) if kk == k} for k in set(kinds)}
    assert all(len(v) == 1 for v in by_kind.values()), by_kind
    assert len({next(iter(v)) for v in by_kind.values()}) == 4, by_kind


# -- 2. Multi-Component Learning ---------------------------------------------------------------------
def test_mcl_union_sampling_binds_tokens_to_their_regions(tray, monkeypatch):
    """Catches: plain textual inversion (all tokens always, unmasked loss) instead of MCL's union sampling.

    In a training step, a component's token is in an item's prompt exactly when its region
    counts in that item's loss; dropped components are masked out.
    """
    import anoplug.diffusion.finetune.common as common

    seen = {}

    def spy(unet, scheduler, z0, cond, *, generator, mask=None, **kw):
        seen["mask"], seen["hidden"] = mask, cond
        return z0.sum() * 0

    g = Comgen(**{**FAST, "batch_size": 8})
    gen_ = torch.Generator().manual_seed(0)
    data = g.build(tray, None, gen_)
    monkeypatch.setattr(common, "noise_prediction_loss", spy)
    prompts = []
    monkeypatch.setattr(g, "_encode", lambda parts, p: prompts.extend(p) or torch.zeros(len(p), 1, 1))
    state = gen_.get_state()
    g.training_step(data, 0, gen_)
    gen_.set_state(state)
    idx = common.draw_indices(len(data["latents"]), 8, gen_)
    seen["hidden"]()
    mask = seen["mask"]
    kept_any = dropped_any = False
    for b, (i, prompt) in enumerate(zip(idx.tolist(), prompts)):
        for j in range(g.n_types):
            region = data["type_lat"][i, j] > 0
            if not bool(region.any()):
                continue
            if COMPONENT.format(j) in prompt:
                kept_any = True
                assert bool((mask[b, 0][region & (data["type_lat"][i].sum(0) == 1)] == 1).all())
            else:
                dropped_any = True
                assert bool((mask[b, 0][region] == 0).all()), f"dropped component {j} still in the loss"
    assert kept_any and dropped_any


def test_component_embeddings_differ_and_are_used(shipped, tray):
    """Catches: one shared embedding for every component, or embeddings the generator never reads.

    The learned rows differ pairwise, and swapping two component rows changes the text condition
    of a prompt that names them.
    """
    rows = shipped.vectors.rows.detach()
    cos = torch.nn.functional.cosine_similarity(rows[:, None], rows[None], dim=-1)
    off = cos[~torch.eye(len(rows), dtype=torch.bool)]
    assert float(off.max()) < 0.995, cos
    parts = shipped.parts
    prompt = [shipped._prompt(0, list(range(shipped.n_types)))]
    a = shipped._encode(parts, prompt)
    saved = rows.clone()
    try:
        with torch.no_grad():
            shipped.vectors.rows[[1, 2]] = saved[[2, 1]]
        b = shipped._encode(parts, prompt)
    finally:
        with torch.no_grad():
            shipped.vectors.rows.copy_(saved)
    assert float((a - b).detach().abs().max()) > 1e-3


# -- 3. prompt modifications -----------------------------------------------------------------------
def test_each_type_modifies_the_prompt_as_the_paper_says(shipped, tray):
    """Catches: an edit whose regions keep the normal prompt (no count / position / type change).

    missing: the region's prompt loses the component (count − 1); extra: gains one (count + 1);
    misplaced: loses it at the source, has it at the destination (position); swapped: the two
    regions name each other's types (type).
    """
    g = shipped
    img, fg = g._inputs(tray[[0]], g.parts)
    inst, types = g._parts_of(img[0], fg[0])
    rng = torch.Generator().manual_seed(3)
    for kind in DEFECT_TYPES:
        rec = {"defect_type": kind, "template": 0, **g._plan(kind, inst, types, fg[0:1], rng)}
        regs = g._regions(rec, inst, types, 64)
        shown = [r[1] for r in regs]
        if kind == "missing":
            assert shown == [[]] and regs[0][2] == int(types[rec["instances"][0]])
        elif kind == "extra":
            assert shown == [[rec["new_type"]]]
        elif kind == "misplaced":
            t = int(types[rec["instances"][0]])
            assert shown == [[], [t]]
            assert not bool((regs[0][0] * regs[1][0]).any()), "destination overlaps the source"
        else:
            a, b = rec["instances"]
            assert shown == [[int(types[b])], [int(types[a])]] and int(types[a]) != int(types[b])


def test_missing_component_is_removed_and_masked(edits):
    """Catches: a "missing" edit that leaves the part in place, or a mask off the part.

    The removed blue block's footprint must change visibly and the mask must cover a good part
    of it. (On the tiny base the removal comes from the layout start, not from the prompt: see
    the README.)
    """
    g, b, out = edits
    rec = out.samples[0]
    assert out.label[0] == "missing"
    fp = _footprint(g, b, 0, rec) > 0.5
    change = (out.image[0] - b.image[0]).abs().amax(0)
    assert float(change[fp].mean()) > 0.08, float(change[fp].mean())
    cover = float((out.mask[0, 0].bool() & fp).sum() / fp.sum())
    assert cover > 0.3, cover


def test_every_type_is_generated_with_a_mask_on_the_changed_component(edits):
    """Catches: a type that produces nothing, or masks that miss the edited component."""
    g, b, out = edits
    for i, kind in enumerate(DEFECT_TYPES):
        assert out.label[i] == kind, (i, out.label[i])
        fp = _footprint(g, b, i, out.samples[i]) > 0.5
        m = out.mask[i, 0].bool()
        iou = float((m & fp).sum() / (m | fp).sum())
        assert iou > 0.15, (kind, iou)


# -- 4. low-density sampling -----------------------------------------------------------------------
def test_new_positions_are_drawn_where_components_are_rare(shipped):
    """Catches: uniform placement (γ = 0) instead of low-density sampling."""
    ramp = torch.linspace(0, 1, 64)[None].expand(64, 64).clone()  # density rising left to right
    ramp[:, 0] = 0.06  # every column inside the support box

    def mean_density(power: float) -> float:
        g = _like(shipped, low_density_power=power, support_radius=0, clearance=0)
        g.state = {**shipped.state, "density": ramp}
        rng = torch.Generator().manual_seed(0)
        pts = [g._destination(torch.zeros(1, 1, 64, 64), rng) for _ in range(300)]
        return float(torch.stack([ramp[y, x] for y, x in pts]).mean())

    low, uniform = mean_density(4.0), mean_density(0.0)
    assert low < 0.5 * uniform, (low, uniform)


# -- 5. Reference Neighbour Association + Text-to-Component Residual Mapping ------------------------------
def test_residual_ignores_what_a_reference_also_has():
    """Catches: a residual against the input alone (no nearest-reference minimum)."""
    ref = torch.full((1, 2, 3, 32, 32), 0.5)
    ref[0, 1, :, 4:10, 4:10] = 0.9  # a normal variant: reference 2 has a bright patch here
    gen = torch.full((1, 3, 32, 32), 0.5)
    gen[..., 4:10, 4:10] = 0.9  # ... and so has the output: not an anomaly
    gen[..., 20:26, 20:26] = 0.1  # an edit no reference has
    r = C.reference_residual(gen, ref, scales=(1,))
    assert float(r[..., 4:10, 4:10].max()) == 0.0 and float(r[..., 20:26, 20:26].min()) > 0.3


def test_residual_mapping_localises_the_change_and_attention_gates_it():
    """Catches: the mask = the whole edited region (no residual), or an attention map that is not used."""
    ref = torch.full((1, 1, 3, 32, 32), 0.5)
    gen = ref[:, 0].clone()
    gen[..., 10:16, 10:20] = 0.7  # a 0.2 change, inside a larger edited region
    region = torch.zeros(1, 1, 32, 32)
    region[..., 6:22, 6:26] = 1
    r = C.reference_residual(gen, ref, scales=(1,))
    full = torch.ones(1, 1, 32, 32)
    m = C.residual_mask(r, full, region, threshold=0.1, attention_floor=0.5)
    truth = torch.zeros_like(m)
    truth[..., 10:16, 10:20] = 1
    assert float((m * truth).sum() / ((m + truth) > 0).sum()) > 0.95
    half = torch.zeros(1, 1, 32, 32)
    half[..., :, :15] = 1  # attention only on the left part of the change
    gated = C.residual_mask(r, half, region, threshold=0.15, attention_floor=0.5)
    assert bool(gated[..., 10:16, 10:15].all()) and not bool(gated[..., :, 15:].any())


def test_end_to_end_mask_is_tighter_than_the_edited_region(edits):
    """Catches: the residual mapping switched off (the mask would be the dilated edit region).

    Against the raw generation (no paste), the mask must match the visible change inside the
    edited region better than the region itself does.
    """
    g, b, out = edits
    raw = out.raw
    ious = []
    for i in range(len(out)):
        img, fg = g._inputs(b[[i]], g.parts)
        inst, types = g._parts_of(img[0], fg[0])
        region = torch.stack([r[0] for r in g._regions(out.samples[i], inst, types, 64)]).amax(0) > 0.5
        seen = ((raw.image[i] - b.image[i]).abs().amax(0) > 0.1) & region
        m = out.mask[i, 0].bool()
        assert bool((m & ~region).sum() == 0)
        ious.append((float((m & seen).sum() / (m | seen).sum()), float((region & seen).sum() / (region | seen).sum())))
    assert sum(a for a, _ in ious) > sum(r for _, r in ious), ious



# -- generation-time parameters on the shipped checkpoint --------------------------------------------------
def test_shipped_checkpoint_takes_generation_params_and_refuses_training_ones(tray, tmp_path, capsys):
    """Catches: ``generation_params`` not declared (every change refused, ``-p`` unusable with the shipped
    model), a declared knob the generator never reads (same output), and a training parameter let through.

    ``strength`` (the share of the DDIM schedule run, img2img-style) is read only at generation: from the
    same seed and the same planned edit, strength 1 redraws the edited region from noise where the
    shipped 0.4 starts it from the layout collage. The number of components or the learning rate
    describe the learned rows and must be refused, in Python and on the command line.
    """
    from anoplug.cli import main
    from anoplug.params import ParamError

    assert {"steps", "guidance", "strength", "low_density_power", "residual_threshold"} <= set(
        Comgen.generation_params)
    assert not {"n_components", "lr", "fit_steps", "base_model", "memory_size"} & set(Comgen.generation_params)
    b = tray[[0]].with_conditions(defect_type=["missing"])
    shipped = Comgen.from_pretrained("tray").with_generation_params(steps=4)
    full = Comgen.from_pretrained("tray").with_generation_params(steps=4, strength=1.0)
    assert shipped.params.strength == 0.4 and full.params.strength == 1.0 and full.is_fitted
    a, c = shipped.generate(b, seed=0), full.generate(b, seed=0)
    assert a.samples == c.samples  # the same edit: only the sampler changed
    assert float((a.image - c.image).abs().max()) > 0.05
    with pytest.raises(ParamError, match="n_components"):
        Comgen.from_pretrained("tray").with_generation_params(n_components=3)
    code = main(["generate", "comgen", "--data", "toy:tray", "--size", "64", "-n", "1", "--out",
                 str(tmp_path / "o"), "-q", "-p", "lr=0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "--param lr cannot be combined" in err and "low_density_power" in err, err
