# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02.1 · CutPaste-style anomalies: CutPaste, NSA and DRAEM's Perlin baseline
#
# **Objectives.**
# 1. Generate the three CutPaste variants (normal, scar, 3-way), NSA's Poisson-blended patches
#    and DRAEM's Perlin-masked textures from the same normal images and seed.
# 2. Check what each method promises: masks that mark the change, labels that agree with the
#    masks, pixels outside the mask untouched where the method says so, same seed → same bytes.
# 3. See the methods side by side in one grid, then move the sliders of CutPaste and see the patch
#    size, shape and colour jitter change.
#
# **Runtime budget.** About 20 s on a laptop CPU (smoke mode: under 20 s). No GPU, no download.
#
# All these methods are *procedural*: no learning, milliseconds per image. They differ in how
# realistic the defect is and in how honest the mask is.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("ANOPLUG_SMOKE", "0") not in ("", "0")
N_IMAGES = 2 if SMOKE else 4  # normal images per method
SIZE = 96 if SMOKE else 256  # side in pixels (the papers work at 256)
CATEGORY = "wood"  # toy category; pasted wood grain is easy to see
SEED = 0

# %% [markdown]
# ## 1. Normal images and the methods

# %%
import time

import torch

import anoplug

METHODS = ["cutpaste", "cutpaste-scar", "cutpaste-3way", "nsa", "draem"]
normals = anoplug.open_dataset(f"toy:{CATEGORY}", split="train", size=SIZE).batch(range(N_IMAGES))
for name in METHODS:
    cls = anoplug.get_generator(name).__class__
    print(f"{name:14s} {cls.paper.venue} {cls.paper.year}  {cls.title}")

# %% [markdown]
# ## 2. Generate and check (a plain cell: it asserts, so CI notices a regression)
#
# `probability=1.0` where a method has one (DRAEM leaves half its images normal by default).
# The per-image time is for this batch on this CPU, first call included.

# %%
results, seconds = {}, {}
for name in METHODS:
    params = {"probability": 1.0} if name == "draem" else {}
    gen = anoplug.get_generator(name, **params)
    t0 = time.perf_counter()
    out = gen.generate(normals, seed=SEED)
    seconds[name] = (time.perf_counter() - t0) / N_IMAGES
    results[name] = out

    assert out.image.shape == normals.image.shape and out.mask.shape == (N_IMAGES, 1, SIZE, SIZE), name
    assert ((out.mask == 0) | (out.mask == 1)).all(), f"{name}: mask not binary"
    for i in range(N_IMAGES):
        assert (out.label[i] != "good") == bool(out.mask[i].any()), f"{name}: label {out.label[i]} vs mask"
    if type(gen).preserves_outside_mask:
        outside = (out.mask == 0).expand_as(out.image)
        assert torch.equal(out.image[outside], normals.image[outside]), f"{name}: pixels outside the mask changed"
    again = gen.generate(normals, seed=SEED)
    assert torch.equal(again.image, out.image) and torch.equal(again.mask, out.mask), f"{name}: not deterministic"

assert all(lbl == "cutpaste" for lbl in results["cutpaste"].label)
assert all(lbl == "scar" for lbl in results["cutpaste-scar"].label)
assert set(results["cutpaste-3way"].label) <= {"good", "cutpaste", "scar"}
for name in METHODS:
    area = float(results[name].mask.mean())
    print(f"{name:14s} {1000 * seconds[name]:7.1f} ms/image   mean anomalous area {100 * area:5.2f} %   "
          f"labels {results[name].label}")

# %% [markdown]
# ## 3. Side by side
#
# One row per method, the same images and seed: generated image, then the mask overlaid.
# CutPaste's rectangle and scar are hard pastes of the image's own texture; NSA blends its patch
# (taken from *another* normal image) with Poisson editing, so its mask keeps only pixels that
# really changed; DRAEM paints a foreign texture through a Perlin-noise mask.

# %%
comparison = anoplug.compare([*METHODS[:-1], ("draem", {"probability": 1.0})], normals, seed=SEED)
assert comparison.error is None and list(comparison.results) == METHODS
comparison

# %% [markdown]
# ## 4. Explore CutPaste
#
# Things to try: `jitter` → 0 makes the patch an exact copy (only its position gives it away);
# `area_min`/`area_max` set the patch area as a fraction of the image; `aspect_ratio` → 1 forces
# squares; `mask_mode="effective"` drops footprint pixels that did not visibly change
# (NSA's rule), so a patch pasted onto similar texture gets a smaller mask.

# %%
explorer = anoplug.explore("cutpaste", normals, seed=SEED)
assert explorer.error is None and explorer.result is not None
explorer

# %% [markdown]
# And NSA: `gamma_scale` and `gamma_offset` set the patch half-widths (offset + Gamma(2, scale) of
# the side), `num_patches` how many patches at most, `clone` the Poisson guidance (`normal`:
# the source's gradients, `mixed`: the stronger of source and destination — the texture preset),
# and `tol` how many grey levels a pixel must change to enter the mask. Compare its mask with
# CutPaste's footprint: NSA labels only what visibly changed.

# %%
nsa_explorer = anoplug.explore("nsa", normals, seed=SEED)
assert nsa_explorer.error is None
nsa_explorer

# %% [markdown]
# ## What the papers report vs what you see here
#
# | method | paper (MVTec AD) | here |
# |---|---|---|
# | CutPaste (CVPR 2021) | image AUROC 95.2 (3-way, from scratch), 96.6 with ImageNet-pretrained features | the generator only |
# | NSA (ECCV 2022) | image AUROC 97.2, pixel AUROC 96.3 (logistic labels) | the generator only |
# | DRAEM (ICCV 2021) | image AUROC 98.0 | the generator only |
#
# - The papers' numbers are for **detectors trained on** these anomalies for hundreds of epochs
#   on MVTec AD; this notebook shows the anomalies themselves. `04_evaluation` trains a small
#   detector on the toy data to compare generators — expect lower, noisier numbers there.
# - Images are `SIZE`² (96 px in smoke mode instead of 256): CutPaste-scar's sizes are given in
#   pixels at 256² and scaled with the image, so the proportions are the paper's.
# - DRAEM's textures come from scikit-image's bundled photographs, not DTD (not redistributable).
# - CutPaste has no official code; the plugin follows the paper and the settings listed in its
#   README. The pixel mask is our addition (the paper returns only a class).
