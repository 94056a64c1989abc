"""AnomalyAny: the conformance kit on the committed tiny base, plus one test per step of spec §5.

Each mechanism test says in its docstring which removal it catches. Everything runs offline on
``tiny-base`` and the tiny CLIP with a few steps (the official step-count constants are fractions).
"""

from __future__ import annotations

import pytest
import torch

from anoplug.testing import GeneratorConformance, make_toy_batch

pytest.importorskip("diffusers")

from anoplug_anomalyany import anomalyany as A  # noqa: E402
from anoplug_anomalyany import guidance as G  # noqa: E402
from anoplug_anomalyany import prompts as P  # noqa: E402
from anoplug_anomalyany.schedule import Img2ImgScheduler, start_index  # noqa: E402

#: a fast configuration: 4-step schedule, the last 2 (+1 PNDM) run, one inner iteration
FAST = {"steps": 4, "gamma": 0.5, "inner_iterations": 1, "refine_iterations": 1, "prompt_init_steps": 2}
PROMPT = "a capsule with a crack"


def capsules(n: int = 1, split: str = "train"):
    from anoplug.data import open_dataset

    return open_dataset("toy:capsule", split=split, size=64).all()[:n].with_conditions(prompt=[PROMPT] * n)


def run(n: int = 1, **params):
    gen = A.AnomalyAny(**{**FAST, "steps": 6, **params})
    return gen, gen.generate(capsules(n), seed=0)


class TestAnomalyAnyConformance(GeneratorConformance):
    generator_name = "anomalyany"
    generator_class = A.AnomalyAny
    params = FAST
    bad_params = {"gamma": 0.0, "steps": 1, "guidance": 0.5, "scheduler": "euler", "preset": "gpu"}
    entry_module = "anoplug_anomalyany.plugin"
    batch_size = 2
    conditions = {"prompt": ["a photo of a surface with a scratch"] * 2}
    replay_needs_seeds = True  # the records hold the text; the noise comes from the seeds


# -- 0. prompts -------------------------------------------------------------------------------------------
def test_token_index_follows_the_prompt():
    """The index is computed from the tokenizer (a hard-coded index, e.g. the notebook's 8, fails here)."""
    tok = A._parts("tiny-base").tokenizer
    assert P.token_indices(tok, "a capsule with a crack", "crack") == (5,)
    assert P.token_indices(tok, "a photo of a capsule with a crack on it", "crack") == (8,)
    multi = P.token_indices(tok, "a capsule with a zigzagq", "zigzagq")  # not in the vocabulary: several BPE pieces
    assert len(multi) > 1 and tok.decode(tok("a capsule with a zigzagq").input_ids[multi[0]:multi[-1] + 1]) == "zigzagq"
    with pytest.raises(ValueError, match="anomaly_word"):
        P.token_indices(tok, PROMPT, "hole")
    gen = A.AnomalyAny(**FAST)
    recs = gen.sample(capsules(1).with_conditions(prompt=["a photo of a capsule with a crack on it"]), [torch.Generator()])
    assert recs[0]["token_indices"] == [8] and recs[0]["anomaly_word"] == "crack"


def test_prompt_rules_and_explicit_overrides():
    """Normal and detailed prompts default from the prompt (our rules); parameters override them."""
    assert P.anomaly_word("a photo of a hazelnut with a crack on it") == "crack"
    assert P.anomaly_word("a plate with a wobbly groove") == "wobbly"  # no defect noun: the word after "with"
    assert P.normal_prompt("a photo of a hazelnut with a crack on it", "crack") == "a photo of a hazelnut"
    assert P.normal_prompt("a photo of a scratch", "scratch") == "a photo of"
    with pytest.raises(ValueError, match="anomaly_word"):
        P.anomaly_word("a photo of a plate")
    tok = A._parts("tiny-base").tokenizer
    (s,) = P.resolve(tok, [PROMPT], normal="a normal capsule", detailed="a jagged dark crack in a capsule")
    assert (s.normal_prompt, s.detailed_prompt, s.token_indices) == ("a normal capsule", "a jagged dark crack in a capsule", (5,))


# -- 1. prompt pre-optimisation ---------------------------------------------------------------------------
def _embeddings(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, u, nc, dc = (torch.randn(2, 12, 16, generator=g) for _ in range(4))
    return c, u, (nc, u), (dc, u), torch.tensor([[4], [6]]), torch.ones(2, 1, dtype=torch.bool)


def test_prompt_pre_optimisation_aligns_the_token_shift():
    """Step 1 raises cos(token shift, normal→detailed shift) and moves only the anomaly rows (removing it: no rise)."""
    c, u, normal, detailed, idx, km = _embeddings()
    c2, u2, hist = G.pre_optimise_prompt(c, u, normal, detailed, idx, km, steps=20, lr=0.1)
    assert bool((hist[-1] > hist[0] + 0.05).all())
    changed = (c2 != c).any(-1) | (u2 != u).any(-1)  # [B, L]
    assert changed[0].nonzero().flatten().tolist() == [4] and changed[1].nonzero().flatten().tolist() == [6]
    c0, u0, h0 = G.pre_optimise_prompt(c, u, normal, detailed, idx, km, steps=0)
    assert torch.equal(c0, c) and torch.equal(u0, u) and h0 == []
    # the official call literally (cosine over the token axis): a vanishing gradient, the embedding stays put
    ct, _, ht = G.pre_optimise_prompt(c, u, normal, detailed, idx, km, steps=20, lr=0.1, axis="tokens")
    assert float((ct - c).abs().max()) < 1e-4 and abs(float(ht[-1][0] - ht[0][0])) < 1e-6


# -- 2. test-time normal-sample conditioning --------------------------------------------------------------
def test_img2img_start_runs_only_the_last_gamma_share():
    """The run starts at timesteps[N − ⌊Nγ⌋] from the noised normal latent (removing it = γ 1: far from the input)."""
    from anoplug.diffusion.base import make_scheduler

    s = Img2ImgScheduler(make_scheduler("pndm"), 0.3)
    s.set_timesteps(200)
    assert s.t_start == start_index(200, 0.3) == 140 and torch.equal(s.timesteps, s.full_timesteps[140:])
    assert int(s.start_timestep) == 301 and len(s.timesteps) == 61  # PNDM repeats one timestep: 60 + 1 model calls
    gen, near = run(gamma=0.5, confine="none")
    assert gen.trace["t_start"] == 3 and len(gen.trace["timesteps"]) == 4  # 6 − ⌊6·0.5⌋; PNDM: 3 + 1 calls
    _, far = run(gamma=1.0, confine="none")
    b = capsules(1)
    obj = (b.object_mask > 0).expand_as(b.image)  # the capsule: γ = 1 redraws it from noise
    assert float((near.image - b.image).abs()[obj].mean()) < 0.5 * float((far.image - b.image).abs()[obj].mean())


# -- 3. attention-guided optimisation and prompt-guided refinement ----------------------------------------
def test_attention_refinement_raises_the_tokens_peak_attention():
    """Step 3 (A&E at i = 0) raises the anomaly token's peak attention (scale_factor 0 removes it: no rise)."""
    store: dict = {}
    orig = G.refinement_hooks

    def spy(*a, **k):
        store["hooks"] = orig(*a, **k)
        return store["hooks"]

    G.refinement_hooks, saved = spy, G.refinement_hooks
    try:
        gen, _ = run(refine_iterations=3, inner_iterations=1)
    finally:
        G.refinement_hooks = saved
    losses = [v for _, v in store["hooks"][0].losses]
    assert len(losses) == 3 and losses[-1] < losses[0]
    peak_on = float(gen.trace["peak_out"][0][0])
    off, _ = run(refine_iterations=3, inner_iterations=1, scale_factor=0.0)
    assert peak_on > float(off.trace["peak_out"][0][0]) + 1e-4
    assert float(gen.trace["peak_in"][0][0]) == pytest.approx(float(off.trace["peak_in"][0][0]), abs=1e-6)


def test_inner_attention_term_lowers_the_attention_loss():
    """The 0.5·(i/T′)·L_att term of the inner iterations lowers L_att within a step (weight 0: it stays)."""
    gen, _ = run(inner_iterations=3, attention_weight=100.0, clip_weight=0.0, scale_factor=0.0, update_prompt=False)
    late = gen.trace["loss_att"][2]
    assert float(late[-1][0]) < float(late[0][0]) - 1e-5  # weak on the tiny base: its attention is near uniform
    off, _ = run(inner_iterations=3, attention_weight=0.0, clip_weight=0.0, scale_factor=0.0, update_prompt=False)
    flat = off.trace["loss_att"][2]
    assert float(flat[-1][0]) == pytest.approx(float(flat[0][0]), abs=1e-6)


def test_clip_loss_lowers_the_image_text_distance():
    """L_clip moves the latent towards the detailed prompt in CLIP space in the late steps (weight 0: it does not)."""
    kw = {"inner_iterations": 3, "attention_weight": 0.0, "scale_factor": 0.0, "update_prompt": False,
          "clip_from": 0.0, "clip_weight": 5.0}
    gen, _ = run(**kw)
    active = [lc for lc in gen.trace["loss_clip"] if float(lc[0][0]) > 0]
    assert active and all(float(lc[-1][0]) < float(lc[0][0]) for lc in active)
    off, _ = run(**{**kw, "clip_weight": 0.0})
    assert all(float(v[0]) == 0.0 for lc in off.trace["loss_clip"] for v in lc)  # no CLIP judge at all


def test_prompt_embeddings_move_towards_the_detailed_prompt():
    """The inner prompt update raises cos(prompt, detailed) step after step (update_prompt=False: constant)."""
    kw = {"inner_iterations": 3, "detailed_prompt": "a jagged dark crack in a capsule", "latent_step": 0.2}
    gen, _ = run(**kw)
    cos = [float(c[0]) for step in gen.trace["prompt_cos"] for c in step]
    assert cos[-1] > cos[0] + 1e-4
    off, _ = run(**{**kw, "update_prompt": False})
    cos_off = [float(c[0]) for step in off.trace["prompt_cos"] for c in step]
    assert max(cos_off) - min(cos_off) < 1e-6


def test_localised_map_switches_the_attend_and_excite_updates_off():
    """A token map inside the band (n within 10..50 of 256) turns step 3 off (without the switch it would run)."""
    on, _ = run()
    assert bool(on.trace["refine"][0][0])
    off, _ = run(localization_band=(0.0, 1.0))  # every map counts as localised
    assert not bool(off.trace["localize"][0]) and not any(bool(r[0]) for r in off.trace["refine"])


# -- 6. the mask blend at noise level t -------------------------------------------------------------------
def test_mask_blend_keeps_the_background_at_noise_level_t(monkeypatch):
    """Step 6 re-noises the source to the step's own t (not t−1); without the blend the background changes."""
    from diffusers import PNDMScheduler

    seen: list[int] = []
    orig = PNDMScheduler.add_noise

    def spy(self, original, noise, timesteps):
        seen.append(int(timesteps.flatten()[0]))
        return orig(self, original, noise, timesteps)

    monkeypatch.setattr(PNDMScheduler, "add_noise", spy)
    gen, kept = run()
    assert seen[0] == gen.trace["timesteps"][0]  # the start latent
    assert seen[1:] == gen.trace["timesteps"]  # one blend per step, at that step's t
    monkeypatch.setattr(PNDMScheduler, "add_noise", orig)
    _, free = run(confine="none")
    b = capsules(1)
    bg = (b.object_mask == 0).expand_as(b.image)
    assert float((free.image - b.image).abs()[bg].mean()) > 1.5 * float((kept.image - b.image).abs()[bg].mean())


# -- 7. the output mask (extension) -----------------------------------------------------------------------
def test_mask_is_attention_and_change_and_the_object():
    """The mask is the binarised token attention ∧ visible change ∧ the object; paste_outside_mask keeps the rest exact."""
    gen, out = run(n=2)
    b = capsules(2)
    att, change = gen.trace["attention"], gen.trace["change"]
    assert torch.equal(out.mask, att * change * (b.object_mask > 0).float())
    assert out.label == ["crack" if bool(out.mask[i].any()) else "good" for i in range(2)]
    assert 0.3 < float(att.mean()) < 0.7  # binarised at the mean of the max-normalised map
    _, pasted = run(n=2, paste_outside_mask=True)
    outside = (pasted.mask == 0).expand_as(b.image)
    assert torch.equal(pasted.image[outside], b.image[outside])


def test_cpu_preset_and_explicit_values():
    """``preset=cpu`` fills steps/γ; explicit values win; the paper preset keeps the official defaults."""
    p = A.AnomalyAnyParams(preset="cpu")
    assert (p.steps, p.gamma, p.guidance, p.scale_factor, p.inner_iterations) == (20, 0.5, 12.5, 50.0, 10)
    assert A.AnomalyAnyParams(preset="cpu", steps=30).steps == 30
    d = A.AnomalyAnyParams()
    assert (d.steps, d.gamma, d.guidance, d.scale_factor, d.scheduler) == (200, 0.3, 12.5, 50.0, "pndm")


def test_a_saved_generator_takes_any_parameter_and_its_preset(tmp_path, capsys):
    """Training-free: every parameter may change on a saved AnomalyAny (``--load DIR -p ...``), and a changed
    preset brings its settings.

    Catches ``generation_params`` left empty (the host would refuse ``-p`` after ``--load``, saying the
    parameters describe a trained model that does not exist) and ``preset`` renamed without its steps/γ."""
    from anoplug.cli import main

    A.AnomalyAny().save(tmp_path / "saved")
    g = A.AnomalyAny.load(tmp_path / "saved")
    assert (g.params.steps, g.params.gamma) == (200, 0.3)
    g.with_generation_params(preset="cpu", guidance=5.0)
    assert (g.params.preset, g.params.steps, g.params.gamma, g.params.guidance) == ("cpu", 20, 0.5, 5.0)
    code = main(["generate", "anomalyany", "--load", str(tmp_path / "saved"), "--data", "toy:capsule", "--size",
                 "64", "-n", "1", "--out", str(tmp_path / "o"), "-q", "--workers", "1", "--prompt", PROMPT,
                 "-p", "steps=4", "-p", "gamma=0.5", "-p", "inner_iterations=1", "-p", "prompt_init_steps=0"])
    assert code == 0, capsys.readouterr().err


def test_kit_batch_has_object_mask():
    assert make_toy_batch(1, 64).object_mask is not None


def test_resize_back_adds_the_change_to_the_full_size_input():
    """Off the working size, the upsampled change goes onto the input, keeping its fine detail (resize_back=image loses it)."""
    b = make_toy_batch(1, 128, seed=3).with_conditions(prompt=[PROMPT])  # per-pixel noise: detail a 64-px model cannot hold
    errs = {}
    for mode in ("residual", "image"):
        out = A.AnomalyAny(**{**FAST, "resize_back": mode}).generate(b, seed=0)
        assert out.image.shape == b.image.shape
        d = out.image - b.image  # its fine detail: what a 3x3 box filter removes
        errs[mode] = float((d - torch.nn.functional.avg_pool2d(d, 3, stride=1, padding=1)).abs().mean())
    assert errs["residual"] < 0.5 * errs["image"]


def test_no_inner_iteration_is_plain_img2img():
    """inner_iterations=0 and scale_factor=0 leave only the img2img start and CFG (the README's ablation)."""
    gen, out = run(inner_iterations=0, scale_factor=0.0, prompt_init_steps=0, clip_weight=0.0)
    assert gen.trace["loss_att"] == [] and not any(bool(r[0]) for r in gen.trace["refine"])
    assert out.image.shape == (1, 3, 64, 64)


def test_models_load_from_local_directories(tmp_path):
    """base_model / clip_model take local folders (the real-checkpoint path): the same bytes as the named tiny ones."""
    from anoplug.diffusion.tiny import TINY_BASE_DIR
    from anoplug.zoo.clip import load_clip, save_clip

    clip_dir = save_clip(*load_clip("tiny")[:2], tmp_path / "clip")  # what CLIPModel.save_pretrained writes
    b = capsules(1)
    named = A.AnomalyAny(**{**FAST, "clip_from": 0.0}).generate(b, seed=0)
    local = A.AnomalyAny(**{**FAST, "clip_from": 0.0, "base_model": str(TINY_BASE_DIR),
                            "clip_model": str(clip_dir)}).generate(b, seed=0)
    assert torch.equal(named.image, local.image) and torch.equal(named.mask, local.mask)
