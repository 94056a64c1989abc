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
# # 00 · Getting started
#
# **Objectives.**
# 1. See which anomaly generators are installed, grouped by the survey's categories.
# 2. Load images from the embedded toy dataset (rendered on the fly: no download, no licence question).
# 3. Generate synthetic anomalies with DRAEM's Perlin-texture method, check the result, read its provenance.
# 4. Move the sliders of the explorer and watch what each parameter does to the defect and its mask.
#
# **Runtime budget.** About 10 s on a laptop CPU (smoke mode: under 15 s). No GPU, no download.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("ANOPLUG_SMOKE", "0") not in ("", "0")
N_IMAGES = 2 if SMOKE else 6  # normal images to start from
SIZE = 64 if SMOKE else 128  # side in pixels (DRAEM's paper works at 256)
CATEGORY = "fabric"  # toy category: fabric, metal, wood, carpet, tile, capsule, nut, bottle, ...
SEED = 0

# %% [markdown]
# ## 1. What is installed
#
# Every method is a separately installed plugin; `anoplug.list_generators()` lists the ones
# this environment has. The categories are the survey's taxonomy (`anoplug.CATEGORIES`).

# %%
import anoplug

for cat, title in anoplug.CATEGORIES.items():
    names = anoplug.list_generators(cat)
    if names:
        print(f"{title:45s} {', '.join(names)}")

# %% [markdown]
# ## 2. Normal images
#
# `open_dataset("toy:fabric")` renders deterministic woven-fabric images at any size. Real
# datasets open the same way from a local copy: `open_dataset("mvtec:/data/mvtec/bottle")`.
# Everything in anoplug speaks one `Batch`: `image` float32 `[B,3,H,W]` in [0, 1],
# `mask` `[B,1,H,W]` in {0, 1}, one `label` per sample (`"good"` = normal) and one `meta` dict.

# %%
from PIL import Image

from anoplug import viz
from anoplug.types import to_uint8

normals = anoplug.open_dataset(f"toy:{CATEGORY}", split="train", size=SIZE).batch(range(N_IMAGES))
print(normals.image.shape, normals.label)
Image.fromarray(viz.grid([[to_uint8(normals.image)[i] for i in range(len(normals))]]))

# %% [markdown]
# ## 3. Generate anomalies (a plain cell: it asserts, so CI notices if anything breaks)
#
# `probability=1.0` makes every image anomalous (DRAEM's training uses 0.5). Sample *i* is
# seeded from `(seed, i)` alone, so the same seed gives the same bytes however the batch is split.

# %%
draem = anoplug.get_generator("draem", probability=1.0)
out = draem.generate(normals, seed=SEED)

assert out.image.shape == normals.image.shape and out.mask.shape == (N_IMAGES, 1, SIZE, SIZE)
assert ((out.mask == 0) | (out.mask == 1)).all(), "masks are binary"
assert any(label != "good" for label in out.label), "probability=1.0 must give anomalies"
for i in range(N_IMAGES):
    assert (out.label[i] != "good") == bool(out.mask[i].any()), "label agrees with mask"
again = draem.generate(normals, seed=SEED)
assert again.image.numpy().tobytes() == out.image.numpy().tobytes(), "same seed, same bytes"
print("labels:", out.label)
print("anomalous area per image:", [round(float(m.mean()), 3) for m in out.mask])
Image.fromarray(viz.grid(viz.triplets(normals, out, with_overlay=True), row_labels=out.label,
                         col_labels=["normal", "generated", "mask", "overlay"]))

# %% [markdown]
# Every sample records where it came from: method, version, parameters, seed and the random
# choices drawn for it (`meta["sample"]`), which is what `anoplug generate` writes to its manifest.

# %%
{k: v for k, v in out.meta[0].items() if k != "sample"} | {"sample keys": sorted(out.meta[0].get("sample", {}))}

# %% [markdown]
# ## 4. Explore the parameters
#
# One call builds the controls from DRAEM's parameter model. Release a slider and the grid
# (input | generated | mask | overlay) updates; a result seen before comes from the cache.
# Things to try: `beta_max` → 0 makes the texture fully opaque; raising `threshold` shrinks
# the defects; `min_scale_exp` ≥ 4 gives only small, blotchy masks; `n_augmenters` = 0 pastes
# the raw texture.

# %%
explorer = anoplug.explore("draem", normals, probability=1.0, seed=SEED)
assert explorer.error is None and explorer.result is not None
explorer

# %% [markdown]
# ## What the paper reports vs what you see here
#
# - **Paper** (DRAEM, ICCV 2021): anomalies made this way, with textures from the DTD
#   dataset at 256×256, train a reconstruction + segmentation network to 98.0 image AUROC on
#   MVTec AD — without ever seeing a real defect.
# - **Here:** the same mask and blending process (Perlin scale law, ±90° rotation,
#   threshold 0.5, texture opacity 1−β with β ~ U(0, 0.8), 3 of 10 augmenters), but the
#   textures come from scikit-image's bundled photographs (DTD cannot be redistributed; pass a
#   DTD folder as `texture_source` for the paper's setting) and images are small
#   (`SIZE` = 64 in smoke mode), so the Perlin blobs look coarser relative to the image.
# - **Why it matters:** the generator only matters through the detector trained on it; the
#   evaluation notebook (`04_evaluation`) measures that on the toy data.
