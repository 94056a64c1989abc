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
# # 02.4 · Feature-level anomalies: PBAS and SuperSimpleNet's feature noise
#
# **Objectives.**
# 1. Understand anomalies that never exist as images: both methods perturb the *features* of a
#    frozen backbone and train a small detector to tell perturbed from normal features.
# 2. PBAS: push every patch feature outward from its nearest centre by `k` × the batch-mean radius
#    — deterministic, no mask. SuperSimpleNet: Gaussian noise N(0, σ²) inside Perlin masks — random,
#    with a mask. Check both mechanisms numerically.
# 3. Watch PBAS's boundary shrink during training (the "progressive" in its name).
# 4. Explore `k` (PBAS) and σ / the Perlin threshold (SuperSimpleNet).
#
# **Runtime budget.** About 2 min on a laptop CPU with the defaults (smoke mode: under 30 s). No GPU.
# Backbone: EfficientNet-Lite0 with ImageNet weights from a pip package (the papers use WideResNet-50-2).

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("ANOPLUG_SMOKE", "0") not in ("", "0")
IMAGE_SIZE = 64 if SMOKE else 128  # side the backbone sees (PBAS paper: 288, SuperSimpleNet: 256)
N_TRAIN = 8 if SMOKE else 32  # normal training images
N_TEST = 10 if SMOKE else 40  # toy test images (good and defective)
STEPS = 5 if SMOKE else 60  # PBAS training steps (paper: 640 epochs)
CATEGORY = "fabric"
SEED = 0

# %% [markdown]
# ## 1. PBAS: anomalous twins of patch features

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch
from anoplug_pbas.pbas import nearest_centres

import anoplug

train = anoplug.open_dataset(f"toy:{CATEGORY}", split="train", size=IMAGE_SIZE).batch(range(N_TRAIN))
test_set = anoplug.open_dataset(f"toy:{CATEGORY}", split="test", size=IMAGE_SIZE)
test = test_set.batch(range(min(N_TEST, len(test_set))))

pbas = anoplug.get_generator("pbas", image_size=IMAGE_SIZE, steps=STEPS, seed=SEED)
rows, (h, w) = pbas.features(train.image)  # [B, h·w, D] patch features
pbas.fit(train, steps=STEPS)

with torch.no_grad():
    projected = pbas.projection(rows.reshape(-1, rows.shape[-1]))
    grid = projected.reshape(len(train), h, w, -1).permute(0, 3, 1, 2)
    twins, mask = pbas.generate_features(grid)
    twin_rows = twins.permute(0, 2, 3, 1).reshape(-1, projected.shape[1])
    centre = pbas.centres[nearest_centres(projected, pbas.centres)]
    d_normal = (projected - centre).norm(dim=1)
    d_twin = (twin_rows - centre).norm(dim=1)

radii = [step["radius"] for step in pbas.history]
assert mask is None, "PBAS has no mask: every patch gets a twin"
assert twins.shape == grid.shape
push = pbas.params.k * d_normal.mean()  # k × batch-mean radius, along the ray from the centre
assert torch.allclose(d_twin - d_normal, push.expand_as(d_normal), rtol=1e-3, atol=1e-3), "twin = f + k·r̄·d/‖d‖"
assert torch.equal(pbas.generate_features(grid, seed=1)[0], twins), "PBAS draws nothing at random"
assert radii[-1] < radii[0], "the compaction loss shrinks the mean radius"
print(f"{len(projected)} patch features of dim {projected.shape[1]} on a {h}×{w} grid per image")
print(f"mean radius r̄ over training: {radii[0]:.3f} -> {radii[-1]:.3f}; twins pushed out by k·r̄ = {float(push):.3f}")

fig, ax = plt.subplots(figsize=(6, 2.6))
ax.hist(d_normal.numpy(), bins=40, alpha=0.7, label="normal patch features")
ax.hist(d_twin.numpy(), bins=40, alpha=0.7, label="PBAS twins")
ax.set_xlabel("distance to the nearest centre (projected space)")
ax.legend()
plt.show()

# %% [markdown]
# ## 2. SuperSimpleNet: Gaussian noise inside Perlin masks

# %%
ssn = anoplug.get_generator("supersimplenet", image_size=IMAGE_SIZE)
features = ssn.features(train.image)
noisy, ssn_mask = ssn.generate_features(features, seed=SEED)
delta = noisy - features.repeat(2, 1, 1, 1)
inside = ssn_mask.expand_as(delta) > 0

assert noisy.shape[0] == 2 * len(train) and ssn_mask.shape[-2:] == features.shape[-2:]
assert bool((delta[~inside] == 0).all()), "no noise outside the mask"
sigma = float(delta[inside].std())
assert abs(sigma / ssn.params.noise_std - 1) < 0.1, f"noise σ {sigma:.4f} vs {ssn.params.noise_std}"
feature_scale = float(features.std())
print(f"noise σ measured {sigma:.4f} (param {ssn.params.noise_std}); feature std {feature_scale:.3f} "
      f"-> the noise is {100 * sigma / feature_scale:.1f} % of the raw feature spread")
print(f"masked: {100 * float(ssn_mask.mean()):.1f} % of positions; empty copies: "
      f"{int((ssn_mask.flatten(1).amax(1) == 0).sum())} of {len(ssn_mask)}")

# %% [markdown]
# ## 3. The PBAS detector after a few steps (sanity check, not a benchmark)

# %%
metrics = pbas.evaluate(test)
assert all(0.0 <= metrics[k] <= 1.0 for k in ("image_auroc", "pixel_auroc"))
print({k: round(v, 3) for k, v in metrics.items()})

# %% [markdown]
# ## 4. Explore
#
# Feature-level explorers show where the features moved (|Δ| per position, normalised per row;
# the row label gives the largest |Δ|). PBAS (unfitted here, so its centres are the batch's own
# per-position mean): `k` scales the push — watch the label grow linearly with it; every position
# moves, so the mask is everything. Press **Generate** after moving a slider.

# %%
pbas_explorer = anoplug.explore("pbas", train[[0, 1]], image_size=IMAGE_SIZE, show=["k"], seed=SEED)
assert pbas_explorer.error is None
pbas_explorer

# %% [markdown]
# SuperSimpleNet: `perlin_threshold` sets how much of the map is masked (0.2 MVTec preset, 0.6
# VisA/supervised), `empty_probability` how many copies stay normal, `noise_std` the σ.

# %%
ssn_explorer = anoplug.explore(ssn, train[[0, 1]], seed=SEED,
                               show=["noise_std", "perlin_threshold", "empty_probability"])
assert ssn_explorer.error is None
ssn_explorer

# %% [markdown]
# ## What the papers report vs what you see here
#
# - **PBAS** (IEEE TCSVT 2025): MVTec AD image AUROC 99.8, pixel AUROC 98.6 (RTX 3090, WRN-50-2,
#   640 epochs, 288²). Its code keeps the best epoch *by test-set AUROC*, so that number includes
#   model selection on the test set.
# - **SuperSimpleNet** (ICPR 2024): MVTec AD image AUROC 98.4, pixel AUROC 97.5.
# - **Here:** EfficientNet-Lite0 instead of WRN-50-2, `IMAGE_SIZE`² toy images, `STEPS` steps.
#   The mechanisms are checked exactly (the twin distance identity, σ of the noise, no noise
#   outside the mask, the shrinking radius); the detector numbers above only show the pipeline
#   runs — with minutes of CPU training they are far from the papers'.
# - **The contrast to remember:** PBAS's anomalies are *decided by the batch* (r̄ is a batch
#   mean, nothing is sampled), SuperSimpleNet's by the seed. σ = 0.015 is absolute: against
#   Lite0's raw features it is the small fraction printed above — SuperSimpleNet adds it after its
#   trainable adaptor, which learns the scale.
