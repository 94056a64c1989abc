# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02.3.1 · Text-based diffusion: a defect named in words (AnomalyAny, ComGEN, PDIG)
#
# **Objectives.**
# 1. Use a prompt as the control: the same noise and the same normal image, another sentence, another image.
# 2. Build, from the host's pieces, the **cross-attention map** of one word: capture the
#    attention of one UNet pass and read the column of that word's token. Measure how well it
#    localises a real defect, and check that AnomalyAny's packaged `token_maps` computes the same thing.
# 3. Step through **AnomalyAny** (CVPR 2025) on the tiny base: the prompts it derives, the
#    img2img start at γ, the attention guidance. Then compare it with plain img2img, honestly.
# 4. Generate the four **logical** anomalies of **ComGEN** (missing, extra, misplaced, swapped) on
#    the toy tray from its shipped checkpoint, with their masks, and see what produces the edit.
# 5. Generate electroluminescence-like solar-cell defects with **PDIG** from its shipped checkpoint:
#    a learned concept token per defect type, a style adaptor, and inference-time constraints that keep
#    the defect in its region and smooth its seam.
# 6. Explore: the attention maps step by step, ComGEN's and PDIG's settings.
#
# **Runtime budget.** About 2–3 min on a laptop CPU (smoke mode: under a minute). No GPU and no download:
# the base model is the committed tiny text-to-image model (`anoplug/assets/tiny_base`, 64 px,
# 4.2 M-parameter UNet, trained on the toy dataset), the CPU stand-in for Stable Diffusion v1.5.
# ComGEN's checkpoint (850 KB) and PDIG's (0.7 MB) ship inside their plugins.
#
# **Why text?** Every method so far needed *something* of the defect: a procedural shape
# (02.1), real samples (02.2, 02.3.2). A text-conditioned diffusion model already knows the
# words "crack" and "missing". If you can steer where the word acts, you can ask for a defect
# type nobody has a sample of. The catch, which this notebook shows: a model only follows the
# words it learned well, and a 64-px toy model learned few.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("ANOPLUG_SMOKE", "0") not in ("", "0")
CATEGORY = "capsule"  # toy object the prompts talk about
DEFECT = "crack"  # the word to localise and to ask AnomalyAny for
N_DEFECTS = 3 if SMOKE else 6  # real toy defects on which the word's attention is measured
T2I_STEPS = 8 if SMOKE else 25  # DDIM steps of the prompt demo and the attention run
AA_STEPS = 8 if SMOKE else 20  # AnomalyAny schedule length N (its cpu preset: 20; paper: 200)
AA_INNER = 3 if SMOKE else 10  # AnomalyAny inner iterations per step (official: 10)
EXPLORE_TRAYS = 1 if SMOKE else 2  # trays in the ComGEN explorer
PDIG_STEPS = 6 if SMOKE else 20  # PDIG's DDIM steps (its cpu preset: 20; paper preset: 50)
EXPLORE_CELLS = 1 if SMOKE else 2  # cell crops in the PDIG explorer
SEED = 0

# %% [markdown]
# ## 1. A prompt is a control
#
# The tiny base is a real diffusers `StableDiffusionPipeline`, only small. `Parts` gives its UNet, VAE,
# text encoder and tokenizer; `anoplug.diffusion.sampling.sample` is the one denoising loop every
# diffusion method in anoplug runs, with classifier-free guidance as a hook. Below: the same
# start noise (seed 0) and three prompts.

# %%
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import anoplug
from anoplug.diffusion import sampling as S
from anoplug.diffusion.base import make_scheduler
from anoplug.diffusion.loading import Parts, load_pipeline

torch.manual_seed(SEED)  # nothing below draws from the global RNG; this only pins library defaults
parts = Parts.from_pipeline(load_pipeline("tiny-base")).freeze()
unet = lambda x, t, c: parts.unet(x, t, encoder_hidden_states=c).sample  # noqa: E731  (the loop's model)

prompts = [f"a photo of a {CATEGORY}", f"a {CATEGORY} with a {DEFECT}", "a photo of a wood surface"]
rngs = [torch.Generator().manual_seed(SEED) for _ in prompts]  # one generator per sample, same seed: same noise
t0 = time.perf_counter()
drawn = S.sample(unet, make_scheduler("ddim"), shape=(len(prompts), 4, 16, 16), rngs=rngs, num_steps=T2I_STEPS,
                 cond=parts.encode_text(prompts), hooks=[S.ClassifierFreeGuidance(parts.encode_text([""] * 3), 3.0)],
                 decode=parts.decode)
print(f"3 images from the same noise in {time.perf_counter() - t0:.1f} s")


def show(images: list, titles: list, size: float = 2.2, cmap=None) -> None:
    """One row of images ([3,H,W] or [H,W] tensors) with titles."""
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size + 0.4))
    for a, im, t in zip(axes, images, titles):
        im = im.detach().float().cpu()
        a.imshow(im.permute(1, 2, 0).clamp(0, 1) if im.ndim == 3 else im, cmap=cmap)
        a.set_title(t, fontsize=8)
        a.axis("off")
    plt.show()


show(list(drawn), prompts)
assert not torch.allclose(drawn[0], drawn[2], atol=0.05), "another prompt, another image from the same noise"

# %% [markdown]
# The object changes with the words (a capsule, a wood texture); the *defect* word changes
# much less. That is the first honest observation: this small model learned categories
# well and defect words weakly. The rest of the notebook is about the tools that make a word
# act *where* you want it.
#
# ## 2. Build it yourself: where does a word look?
#
# In every cross-attention layer, each latent pixel (a query) spreads one unit of attention over
# the prompt's tokens (the keys). The column of one token, reshaped to the latent grid, is
# that word's **attention map**. We install anoplug's attention processor, which captures the
# head-averaged probabilities, run **one** UNet pass on a real defective capsule noised to t = 200,
# and read the column of the defect word.
#
# First the token index. It is computed with the model's own tokenizer, never typed in by hand:
# another tokenizer splits words differently.

# %%
from anoplug.diffusion.attention import AttentionState, attention_processors

prompt = f"a {CATEGORY} with a {DEFECT}"
ids = parts.tokenizer(prompt).input_ids
tokens = parts.tokenizer.convert_ids_to_tokens(ids)
k = ids.index(parts.tokenizer(DEFECT, add_special_tokens=False).input_ids[0])
print(list(enumerate(tokens)), f"-> '{DEFECT}' is token {k}")

test = anoplug.open_dataset(f"toy:{CATEGORY}", split="test", size=64)
real = test.batch([i for i in range(len(test)) if test.label(i) == DEFECT][:N_DEFECTS])
z0 = parts.encode_image(real.image)  # [B, 4, 16, 16]: the tiny VAE divides the side by 4
ddim = make_scheduler("ddim")
t = torch.tensor(200)
noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(SEED))
state = AttentionState(latent_size=tuple(z0.shape[-2:]))
with torch.no_grad(), attention_processors(parts.unet, state, capture=lambda name: True, reweight=[]):
    parts.unet(ddim.add_noise(z0, noise, t), t, encoder_hidden_states=parts.encode_text([prompt] * len(real)))
captured = {name: maps[-1] for name, maps in state.maps.items()}  # layer -> [B, pixels, tokens]
print({name.split(".attn2")[0]: tuple(m.shape) for name, m in captured.items()})

# %% [markdown]
# Ten cross-attention layers, at three resolutions (256 = 16×16 pixels, 64, 16). As Attend-and-Excite
# and AnomalyAny do, we average the layers at the finest size here (16×16, the latent itself),
# drop the start token (which takes most of the attention in every text model) and the last position,
# and **sharpen**: a softmax of 100 × the probabilities over the remaining tokens.

# %%
res = 16
fine = torch.stack([m for m in captured.values() if m.shape[1] == res * res]).mean(0)  # [B, 256, 32]
sharp = (fine[:, :, 1:-1] * 100).softmax(-1)  # drop BOS and the last position, sharpen
word_map = sharp[:, :, k - 1].reshape(-1, res, res)  # k - 1: BOS was dropped
raw_map = fine[:, :, k].reshape(-1, res, res)

gt = F.interpolate(real.mask, size=(res, res), mode="area")[:, 0]  # the defect's share of each latent pixel
lift = (word_map * gt).flatten(1).sum(1) / word_map.flatten(1).sum(1) / gt.flatten(1).mean(1)
print(f"'{DEFECT}' attention inside the real defect / the defect's area (1 = no localisation): "
      f"{[round(v, 2) for v in lift.tolist()]}")
show([real.image[0], real.mask[0, 0], raw_map[0], word_map[0]],
     [f"real {DEFECT}", "its mask", f"raw column of '{DEFECT}'", "sharpened (x100 softmax)"], cmap="magma")

# %% [markdown]
# What you see: the raw column is almost flat (every token gets about 1/32 of each pixel's
# attention), and the sharpened map has some structure but sits only a little more on the real
# crack than elsewhere: the lift is just above 1. In Stable Diffusion the same procedure gives maps that
# outline the object a word names. That is why Attend-and-Excite and AnomalyAny can *use* them.
# Here the mechanism is right, and the signal is weak.
#
# **The packaged version.** AnomalyAny's `token_maps` computes the same map (and then smooths
# it with Attend-and-Excite's 3×3 Gaussian). With smoothing off it must agree with ours:

# %%
from anoplug_anomalyany.attention_maps import token_maps
from anoplug_anomalyany.prompts import token_indices

assert token_indices(parts.tokenizer, prompt, DEFECT) == (k,), "the plugin finds the same token"
packaged = token_maps(captured, torch.tensor([[k]] * len(real)), res, smooth=False)[:, 0]
assert torch.allclose(packaged, word_map, atol=1e-6), "our map is the plugin's map"
assert float(lift.mean()) > 1.0, "the word looks a little more at its defect than elsewhere"
print("hand-built map == anoplug_anomalyany.attention_maps.token_maps(smooth=False)")

# %% [markdown]
# ### Exercise 1: what does the sharpening do?
#
# *Predict first:* the sharpened map's peak is about 0.06 on these images. Without the ×100
# (a plain softmax over the tokens, or the raw column), would the word's peak be higher or lower? And
# would Attend-and-Excite's loss `1 − peak` be easier or harder to lower? Write the two maps'
# peaks, then open the solution.

# %% tags=["solution"]
# Solution: without sharpening every token keeps ~1/30 of a pixel's attention, so the peak is lower;
# the x100 softmax turns small differences between tokens into larger shares.
plain = fine[:, :, 1:-1].softmax(-1)[:, :, k - 1]
print(f"peak, sharpened: {float(word_map.amax()):.4f}; plain softmax: {float(plain.amax()):.4f}; "
      f"raw column: {float(raw_map.amax()):.4f}")
assert float(word_map.amax()) > float(plain.amax())
# With either map the loss 1 - peak stays close to 1 on this model: its gradient is small, which
# is the reason section 3 finds AnomalyAny close to plain img2img here.

# %% [markdown]
# ## 3. AnomalyAny, step by step
#
# AnomalyAny is **training-free**. Given one normal image and a prompt, it:
#
# 0. derives the anomaly word, its token positions, a normal prompt and a detailed prompt;
# 1. pre-optimises the anomaly token's embedding towards the detailed description;
# 2. starts from the normal image's latent, **noised to step `t_start = N − ⌊N·γ⌋`**, and runs only
#    the last γ share of the schedule (img2img);
# 3. at every step, runs `inner_iterations` gradient steps on the latent (and the prompt
#    embeddings) that raise the anomaly token's peak attention (the map you built above) and,
#    late in the run, lower a CLIP distance to the detailed prompt;
# 4. in the first step, Attend-and-Excite's larger refinement steps if the word is still under-attended;
# 5. classifier-free guidance (12.5) and the scheduler step; the object mask blended back.
#
# Step 0 and step 2 can be read directly:

# %%
from anoplug_anomalyany.anomalyany import AnomalyAny
from anoplug_anomalyany.prompts import resolve
from anoplug_anomalyany.schedule import start_index

detailed = f"a jagged dark {DEFECT} in a {CATEGORY}"
(ps,) = resolve(parts.tokenizer, [prompt], detailed=detailed)
print(ps)
gamma = 0.5  # the plugin's cpu preset (the paper: N = 200, gamma = 0.3)
print(f"N = {AA_STEPS}, gamma = {gamma}: start at step {start_index(AA_STEPS, gamma)}, "
      f"so {AA_STEPS - start_index(AA_STEPS, gamma)} steps run")

# %% [markdown]
# Now the whole method, three ways, on the same normal capsule and seed: **plain img2img** (the
# same noised start, prompt and guidance, with no optimisation), **AnomalyAny with the official
# step sizes**, and AnomalyAny with Attend-and-Excite's steps **40× larger** (not a default: it
# shows what the guidance does when it is strong enough to matter on this model). `gen.trace` records,
# at every step, the anomaly token's peak attention in the guided pass.

# %%
normal = anoplug.open_dataset(f"toy:{CATEGORY}", split="train", size=64).batch([0])
asked = normal.with_conditions(prompt=[prompt])
common = dict(preset="cpu", steps=AA_STEPS, gamma=gamma, inner_iterations=AA_INNER, detailed_prompt=detailed)
variants = {
    "img2img": dict(inner_iterations=0, prompt_init_steps=0, scale_factor=0.0),
    "AnomalyAny": {},
    "A&E steps x40": dict(scale_factor=2000.0, attention_weight=20.0),
}
runs, peaks = {}, {}
t0 = time.perf_counter()
for name, extra in variants.items():
    gen = AnomalyAny(**{**common, **extra})
    runs[name] = gen.generate(asked, seed=SEED)
    peaks[name] = [float(p.mean()) for p in gen.trace["peak_out"]]
print(f"3 runs in {time.perf_counter() - t0:.1f} s")

fig, ax = plt.subplots(1, 2, figsize=(10, 2.8), gridspec_kw={"width_ratios": [1, 2.2]})
for name, p in peaks.items():
    ax[0].plot(p, marker="o", label=name)
ax[0].set_xlabel("denoising step that ran")
ax[0].set_ylabel(f"peak attention of '{DEFECT}'")
ax[0].legend(fontsize=7)
strip = [normal.image[0], *[r.image[0] for r in runs.values()], runs["AnomalyAny"].mask[0].expand(3, -1, -1)]
ax[1].imshow(torch.cat(strip, 2).permute(1, 2, 0).clamp(0, 1))
ax[1].set_title("normal | " + " | ".join(runs) + " | AnomalyAny's mask", fontsize=8)
ax[1].axis("off")
plt.show()
diff = (runs["AnomalyAny"].image - runs["img2img"].image).abs().max()
print(f"largest pixel difference AnomalyAny vs img2img: {float(diff):.3f}; AnomalyAny's label: {runs['AnomalyAny'].label}")
assert runs["AnomalyAny"].label[0] in (DEFECT, "good")
change = (runs["AnomalyAny"].image - normal.image).abs().amax(1)
on_object = normal.object_mask[:, 0] > 0
print(f"mean change on the capsule {float(change[on_object].mean()):.3f}, on the background "
      f"{float(change[~on_object].mean()):.3f}")
assert float(change[~on_object].mean()) < 0.5 * float(change[on_object].mean()), \
    "the object mask is blended back at every step: the background changes far less (the VAE's blur remains)"

# %% [markdown]
# Read the figure without flattery. The img2img part does most of the visible work: at guidance
# 12.5 the tiny base re-renders the capsule (more saturated, smears). With the official step sizes
# AnomalyAny's token peak stays where img2img's is (about 0.04–0.05), because `1 − peak` is nearly 1 everywhere
# and its gradient is small on a model whose attention is this flat (section 2). With 40× larger steps the
# peak rises, and the image moves more, but it does not become a crack. AnomalyAny's mask
# (an extension of the plugin: the word's binarised map ∧ the visible change) marks where
# something changed *and* the word looked, not a defect. The plugin's README has the same comparison
# on eight images and the measured numbers.
#
# ### Exercise 2: predict the effect of the step size
#
# *Predict first:* with the refinement steps 40× larger (`scale_factor=2000`), will the word's
# peak attention, averaged over the steps of the run, be higher than with the official `scale_factor=50`?
# And will the output image be farther from plain img2img's? Check with the runs above.

# %% tags=["solution"]
# Solution: yes to both: larger steps raise the attention the loss asks for, and move the latent more.
final = {name: sum(p) / len(p) for name, p in peaks.items()}
far = {name: float((r.image - runs["img2img"].image).abs().mean()) for name, r in runs.items()}
print("mean peak over the run:", {n: round(v, 4) for n, v in final.items()})
print("mean |x - img2img|:", {n: round(v, 4) for n, v in far.items()})
assert final["A&E steps x40"] > final["AnomalyAny"]
assert far["A&E steps x40"] > far["AnomalyAny"]

# %% [markdown]
# ## 4. ComGEN: logical anomalies on the tray
#
# A *logical* anomaly breaks a rule, not a surface: a part missing, an extra one, one in the wrong
# place, two swapped. ComGEN (arXiv 2502.11712) learns **one text embedding per component** of the
# normal images (Multi-Component Learning), then edits the prompt: drop a component's token
# (missing), add one (extra), move it (misplaced), exchange two (swapped). New positions are drawn
# where the normals rarely have parts (*low-density sampling*), and the mask comes from the residual
# against the nearest normal references, weighted by the changed tokens' attention.
#
# The shipped `tray` checkpoint learned the washer, red cap, blue block and screw of `toy:tray`
# from normal trays only. Ask for each type on four trays it never saw:

# %%
from anoplug_comgen.method import Comgen

comgen = Comgen.from_pretrained("tray")
trays = anoplug.open_dataset("toy:tray", split="train", size=64, seed=1, length=4).all()
types = ["missing", "extra", "misplaced", "swapped"]
t0 = time.perf_counter()
logical = comgen.generate(trays.with_conditions(defect_type=types), seed=SEED)
print(f"4 trays in {time.perf_counter() - t0:.1f} s; labels {logical.label}")
for rec in logical.samples:
    print({k: v for k, v in rec.items() if not isinstance(v, (list, dict))})

fig, axes = plt.subplots(3, 4, figsize=(8.5, 6.6))
for j, typ in enumerate(types):
    overlay = logical.image[j].clone()
    overlay[0] = torch.maximum(overlay[0], logical.mask[j, 0])  # magenta on the mask
    overlay[2] = torch.maximum(overlay[2], logical.mask[j, 0])
    for i, (im, name) in enumerate([(trays.image[j], "normal"), (logical.image[j], typ), (overlay, "mask")]):
        axes[i, j].imshow(im.permute(1, 2, 0).clamp(0, 1))
        axes[i, j].set_title(name, fontsize=8)
        axes[i, j].axis("off")
plt.show()

assert logical.label == types, "each type realised as asked"
assert all(float(m.sum()) > 0 for m in logical.mask), "each edit has a mask"
outside = (logical.mask == 0).expand_as(logical.image)
assert torch.equal(logical.image[outside], trays.image[outside]), "background pasted back bit for bit"

# %% [markdown]
# Where does the edit come from? On Stable Diffusion the modified *prompt* would draw it. The
# tiny base barely reacts to component words: generating with the modified prompts and with the
# unmodified normal prompt gives the same change (the plugin README's table: 0.112 vs 0.113 for
# *missing*, 0.432 vs 0.435 for *swapped*). So the shipped checkpoint starts each edited region from a
# **layout collage** (the part removed by filling from its surroundings, or copied to its new
# place), noises it to strength 0.4 and denoises it. The placement (low density), the per-type
# region logic and the residual masks are ComGEN's. The visible pixels are the collage, harmonised by
# 20 DDIM steps. *Swapped* is the clearest; *extra* is a faint blob.

# %% [markdown]
# ## 5. PDIG: few real defects, a concept token, a style adaptor, a smooth seam
#
# PDIG (Li et al., arXiv 2505.06117) makes electroluminescence (EL) images of defective solar cells, a
# domain where real defects are few and look nothing like the web images Stable Diffusion learned.
# It adapts SD on a handful of real defects with three parts, all named in the paper's abstract (the only
# text of it we could read; the formulas are the plugin's documented assumptions):
#
# - **SCE**, semantic concept embedding: per defect type a concept token `<pdig_k>` whose embedding is a
#   *text prior* (the mean embedding of the type's words, e.g. "dark cell") plus a learned residual;
# - **LISA**, a lightweight industrial style adaptor: in every cross-attention layer a second key/value
#   branch over a few learned style tokens per type (*cross-disentangled attention*). The text attention
#   is untouched, so at `style_scale=0` the model is exactly the base;
# - **TIDSC**, text–image dual-space constraints at inference: gradient steps on the latent that penalise
#   the concept tokens' attention *outside* the target mask (positional consistency, text space) and the
#   image gradient across the region's border (boundary smoothing, image space).
#
# No toy category looks like an EL cell array, so the plugin renders its own (`anoplug_pdig.elcells`):
# 2×2 mono-Si cells with busbars and fingers, and three real defect kinds with exact masks (crack, dark
# cell, finger interruption). The shipped `elcells` checkpoint was fitted on 32 normal and 48 defective
# crops of its train split (SCE and LISA trained with `anoplug.train.Trainer`, 400 steps). Below: three
# held-out normal crops, each given a real *test* defect's mask as its target and asked for that type.

# %%
import copy

from anoplug_pdig import elcells, tidsc
from anoplug_pdig.method import Pdig

pdig = Pdig.from_pretrained("elcells").with_generation_params(preset="cpu", steps=PDIG_STEPS)
print(f"fitted types {pdig.types}; preset {pdig.params.preset}: {pdig.params.steps} DDIM steps, "
      f"guidance {pdig.params.guidance}, TIDSC on the first {pdig.params.tidsc_fraction:.0%} of them")
cells = elcells.normals(3, split="test", seed=7)
real_pv = elcells.defects(3, split="test", seed=7)  # crack, dark_cell, finger, each with its exact mask
asked_pv = cells.with_conditions(defect_type=list(real_pv.label), target_mask=real_pv.mask)
t0 = time.perf_counter()
pv = pdig.generate(asked_pv, seed=SEED)
print(f"3 cells in {time.perf_counter() - t0:.1f} s; labels {pv.label}")
print("the prompt of the first:", repr(pv.meta[0]["prompt"]))

fig, axes = plt.subplots(3, 4, figsize=(8.5, 6.6))
for i in range(3):
    for j, (im, name) in enumerate([(cells.image[i], "normal"), (pv.image[i], f"PDIG: {pv.label[i]}"),
                                    (pv.mask[i].expand(3, -1, -1), "mask"), (real_pv.image[i], "real (reference)")]):
        axes[i, j].imshow(im.permute(1, 2, 0).clamp(0, 1))
        axes[i, j].set_title(name, fontsize=8)
        axes[i, j].axis("off")
plt.show()

assert pv.label == list(real_pv.label), "each type realised as asked"
changed_pv = (pv.image != cells.image).any(1, keepdim=True)
assert bool((changed_pv <= pv.mask.bool()).all()), "every changed pixel is in the mask; outside it, the input"
assert bool((real_pv.mask.bool() <= pv.mask.bool()).all()), "the mask holds the whole target"

# %% [markdown]
# Read it without flattery. The dark cell comes out as a dark patch filling its target, darker than the
# real one and with a faint reddish tint (the tiny base learned colour from RGB toys). The crack is a soft
# dark smear along its mask and the finger interruption a small dark-and-bright patch: a 64-px model with a
# ×4 VAE cannot draw a 1–2 px line. The mask is
# the target plus every visibly changed pixel of the grown region, and every other pixel is the input's,
# bit for bit. The concept token is in the prompt (`<pdig_k>` followed by the type's words).
#
# **TIDSC, measured.** `pdig.last_tidsc` holds the constraint loss of every gradient step of the last run.
# The boundary-smoothing term is judged by the quantity it targets: the mean image gradient on the band
# around the region's border. Three runs from the same seed: no TIDSC, the defaults (positional weight
# 500, smoothing 100), and the smoothing term alone with larger steps.

# %%
region_pv = F.max_pool2d(real_pv.mask, 2 * pdig.params.region_dilation + 1, stride=1,
                         padding=pdig.params.region_dilation)
print("TIDSC losses of the default run (step, loss):", [(s, round(v, 3)) for s, v in pdig.last_tidsc[:4]], "...")
seams = {"input": tidsc.boundary_gradient(cells.image, region_pv),
         "defaults": tidsc.boundary_gradient(pv.image, region_pv)}
for name, change in {"no TIDSC": dict(tidsc_iterations=0),
                     "smoothing only": dict(position_weight=0.0, smooth_weight=50.0, tidsc_step=50.0,
                                            tidsc_iterations=2, tidsc_fraction=1.0)}.items():
    out_pv = copy.copy(pdig).with_generation_params(**change).generate(asked_pv, seed=SEED)  # same weights
    seams[name] = tidsc.boundary_gradient(out_pv.image, region_pv)
print("mean |gradient| on the region's border band:", {k: round(v, 4) for k, v in seams.items()})
verdict = "lowers" if seams["smoothing only"] < seams["no TIDSC"] else "does not lower"
print(f"with {PDIG_STEPS} steps, the smoothing term alone {verdict} the seam's gradient")
assert seams["defaults"] != seams["no TIDSC"], "TIDSC acts: its latent steps change the image"

# %% [markdown]
# Measured on these three cells (border-band gradient; lower = smoother seam):
#
# | DDIM steps | input | no TIDSC | defaults | smoothing only |
# |---|---|---|---|---|
# | 6 (smoke run) | 0.193 | 0.203 | 0.200 | 0.181 |
# | 20 (full run, the `cpu` preset) | 0.193 | 0.211 | 0.248 | 0.233 |
#
# So the smoothing term works only on a short schedule: with 6 steps it brings the seam below the
# untouched generation, with 20 steps every TIDSC setting tried (also 1–2 iterations, weights 50–200,
# the first half or all of the steps) leaves a *rougher* seam than no TIDSC. The default weights never help:
# the positional term dominates their step (the losses printed above, about 500, are almost all weight 500
# × an outside share near 1), and on this model that share can hardly move, because the tiny base's
# cross-attention is nearly flat (section 2). The mechanism runs and is
# tested in the plugin; making it help at 20 steps is open. PDIG's explorer is in section 6.

# %% [markdown]
# ## 6. Explore
#
# **The attention maps, step by step.** The slider walks through a full denoising run of the
# prompt on a real defective capsule (img2img over the last 60 % of the schedule), the dropdown picks
# the token. Compare the defect word's map over the steps with the maps of `capsule`, `a` and `with`.
# *Things to try:* set `DEFECT = "hole"` in the parameters cell and re-run.

# %%
import ipywidgets as W
from anoplug_anomalyany.schedule import Img2ImgScheduler

img2img = Img2ImgScheduler(make_scheduler("ddim"), 0.6)
img2img.set_timesteps(T2I_STEPS)
capture = S.CaptureCrossAttention(parts.unet, layers=lambda name: name in captured and captured[name].shape[1] == res * res)
x_start = img2img.add_noise(z0[:1], noise[:1], img2img.start_timestep.reshape(1))
S.sample(unet, img2img, x_start, rngs=[torch.Generator().manual_seed(SEED)], num_steps=T2I_STEPS,
         cond=parts.encode_text([prompt]), hooks=[capture, S.ClassifierFreeGuidance(parts.encode_text([""]), 3.0)])
per_step = [(torch.stack(list(rec.values())).mean(0)[0, :, 1:-1] * 100).softmax(-1) for rec in capture.maps]
assert len(per_step) == len(img2img.timesteps) and per_step[0].shape == (res * res, 30)
words = {f"{i}: {tok}": i for i, tok in enumerate(tokens) if 0 < i < len(tokens) - 1}


def draw(step: int, token: int) -> None:
    m = per_step[step][:, token - 1].reshape(res, res)
    show([real.image[0], real.mask[0, 0], m], ["capsule", "real defect", f"step {step}: peak {float(m.max()):.3f}"],
         cmap="magma")


attention_explorer = W.interact(draw, step=W.IntSlider(0, 0, len(per_step) - 1), token=W.Dropdown(options=words, value=k))

# %% [markdown]
# **ComGEN's settings.** The explorer runs the shipped checkpoint on a tray; press **Generate** after a
# change; `defect_type` empty means "drawn per sample". *Predict first:* type `missing` and raise
# `residual_threshold` from 0.05 to 0.2. Will the mask shrink, or the edit? (Both: the background outside
# the mask is pasted back from the input, so a smaller mask keeps less of the edit; at some value the
# sample becomes `good`.) Then type `extra` and move `low_density_power` from 0 (anywhere in the parts'
# box) to 8 (only where normal trays almost never have a part).

# %%
explorer = anoplug.explore(comgen, trays[list(range(EXPLORE_TRAYS))], seed=SEED, size=64,
                           show=["defect_type", "residual_threshold", "low_density_power", "region_dilation"])
assert explorer.error is None and explorer.result is not None
explorer

# %% [markdown]
# **PDIG's settings.** The same shipped checkpoint with the settings of section 5; press **Generate** after
# a change. Without a target mask PDIG places the defect in a real training mask of its type, flipped and
# shifted; `defect_type` empty means "drawn per sample". *Predict first:* set `defect_type` to `dark_cell`
# and `style_scale` to 0 (the base model with SCE's token only, no style branch). Will the patch still be
# dark? Then raise `tidsc_iterations` to 3 and compare the seam.

# %%
pdig_explorer = anoplug.explore(pdig, elcells.normals(EXPLORE_CELLS, split="test", seed=8), seed=SEED, size=64,
                                show=["defect_type", "style_scale", "tidsc_iterations", "smooth_weight"])
assert pdig_explorer.error is None and pdig_explorer.result is not None
pdig_explorer

# %% [markdown]
# ## 7. What the papers report vs what you see here
#
# - **AnomalyAny** (Sun et al., CVPR 2025). *Paper:* Stable Diffusion v1.5 at 512 px, 200 PNDM steps from
#   γ = 0.3, guidance 12.5, CLIP ViT-L/14; unseen MVTec AD / VisA defects that look like the words, with
#   gains for downstream detection. *Here:* the 64-px tiny base and tiny CLIP, `AA_STEPS` steps and
#   `AA_INNER` inner iterations. Every step of the algorithm runs (and is tested in the plugin), but its
#   attention loss hardly moves this model: the word's attention is nearly flat (section 2), so with
#   the official step sizes the result is plain img2img's, and with 40× larger steps it is a
#   different smear, not a crack. The mask is the plugin's own extension (the original has none).
#   Real-checkpoint command: the plugin README (`-p base_model=/models/sd15 -p clip_model=/models/clip-l14`).
# - **ComGEN** (Tong et al., arXiv 2502.11712). *Paper:* SD with one learned embedding per component;
#   the modified prompt draws the logical anomaly; 91.2 % image AUROC on MVTec LOCO with its CSDA
#   detector. Only the paper's front matter could be read, so most details are the plugin's
#   documented assumptions. *Here:* all four types are realised on the tray with masks on the changed
#   parts (IoU with the changed component 0.29–0.56 in the README), but the edit comes from a
#   layout collage: on the tiny base the prompt change has no measurable effect. CSDA is not built.
# - **PDIG** (Li et al., arXiv 2505.06117). *Paper:* SD fine-tuned on a few real EL defect images with
#   SCE, LISA and TIDSC; FID 19.16 points better than the runner-up, and better downstream detection. Only
#   the abstract could be read, so every formula is the plugin's assumption. *Here:* the tiny base at 64 px
#   on the plugin's own EL-like cells; the three types are realised where asked, with masks that hold every
#   changed pixel, but as dark patches and soft smears, not thin cracks; TIDSC's smoothing term works on its
#   own, its default weights do not smooth the seam. No FID or detection numbers. Real checkpoint: a local
#   SD v1.x folder as `base_model` and a fit on your EL images (the plugin README's command).
#
# The lesson that carries over to a real model: a text-conditioned model gives you *what*, attention
# gives you *where*, and both are only as good as the model's grip on the words. Measure it, as in
# section 2, before you trust a prompt.
