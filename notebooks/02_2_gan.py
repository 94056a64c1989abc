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
# # 02.2 · GANs that learn a defect distribution: Defect-GAN, DT-GAN, SDGAN and EID-GAN
#
# **Objectives.**
# 1. See the adversarial game itself: a generator and a critic, twenty lines, trained for a
#    few dozen steps on toy fabric defects with the toolkit's `GANStep`.
# 2. Take apart what each method adds to it: Defect-GAN's *layers* (a foreground and an alpha
#    map composed over the normal image, and the restoration that undoes them), DT-GAN's
#    *style codes* (the same defect type, another style — or another product's defect as the
#    reference), SDGAN's *cycle* (normal → defective → normal, and a mask that has to be derived),
#    EID-GAN's *penalty* (a generator that is forced to reproduce a tiny outlier).
# 3. Use the small checkpoints the plugins ship, explore their parameters, and read honestly what
#    the papers report next to what these CPU-sized models show.
#
# **Runtime budget.** About a minute on a laptop CPU (smoke mode: well under a minute). No GPU,
# no download: the four checkpoints are a few MB of safetensors inside the plugins.
#
# **Why GANs for defects?** Procedural methods (CutPaste, DRAEM, NSA — notebook 02.1) paste
# something that is *not* a defect and hope the detector learns "anything unusual". When a
# line has a handful of real defects, a GAN can learn what *those* defects look like and make
# more of them: their colour, their shape, where they sit. The price: training, and a mask that
# is only as honest as the method's design makes it.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("ANOPLUG_SMOKE", "0") not in ("", "0")
N_IMAGES = 3 if SMOKE else 6  # normal images per figure
SIZE = 128 if SMOKE else 256  # side of the images we generate on (the checkpoints run at 64 px)
GAME_STEPS = 30 if SMOKE else 300  # steps of the hand-made GAN in section 1
SEED = 0

# %% [markdown]
# ## 1. The adversarial game, built yourself
#
# A generator G maps noise z to an image; a critic D scores images. D is trained to tell real
# defect crops from G's, G to make D say "real". `anoplug.train.GANStep` runs one D update and
# one G update per step (non-saturating loss, the original GAN's), with every random draw from
# the run's seeded generator; `GANTrainer` is the loop (accelerate underneath).
#
# The real data: 16×16 crops centred on the toy fabric's held-out defects.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import anoplug
from anoplug.registry import get_registry
from anoplug.train import GANBatch, GANStep, GANTrainer

test = anoplug.open_dataset("toy:fabric", split="test", size=64)
defects = test.batch([i for i in range(len(test)) if test.label(i) != "good"])
crops = []
for img, m in zip(defects.image, defects.mask):
    ys, xs = m[0].nonzero(as_tuple=True)
    cy, cx = int(ys.float().mean().clamp(8, 55)), int(xs.float().mean().clamp(8, 55))
    crops.append(img[:, cy - 8: cy + 8, cx - 8: cx + 8])
real = torch.stack(crops) * 2 - 1  # [-1, 1], as tanh outputs
print(f"{len(real)} real defect crops of 16x16 from {len(set(defects.label))} defect types")

G = nn.Sequential(nn.Linear(32, 64 * 4 * 4), nn.Unflatten(1, (64, 4, 4)), nn.ReLU(),
                  nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                  nn.ConvTranspose2d(32, 3, 4, 2, 1), nn.Tanh())
D = nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2),
                  nn.Flatten(), nn.Linear(64 * 4 * 4, 1))


def sample(ctx):
    """One batch: 16 real crops and 16 latents, both from the run's generator."""
    i = torch.randint(len(real), (16,), generator=ctx.generator)
    return GANBatch(real=real[i], g_input=torch.randn(16, 32, generator=ctx.generator))


g = torch.Generator().manual_seed(SEED)
history = GANTrainer(GANStep(G, D, sample, loss="nonsaturating"), steps=GAME_STEPS, generator=g).fit()
fig, ax = plt.subplots(1, 2, figsize=(9, 2.6))
ax[0].plot([h["d_loss"] for h in history], label="D loss")
ax[0].plot([h["g_loss"] for h in history], label="G loss")
ax[0].set_xlabel("step")
ax[0].legend()
with torch.no_grad():
    fakes = (G.eval()(torch.randn(8, 32, generator=torch.Generator().manual_seed(1))) + 1) / 2
ax[1].imshow(torch.cat([torch.cat(list((real[:8] + 1) / 2), 2), torch.cat(list(fakes), 2)], 1).permute(1, 2, 0))
ax[1].set_title("real crops (top) and G's (bottom)")
ax[1].axis("off")
plt.show()

# %% [markdown]
# The two losses pull against each other; neither goes to zero while the game is balanced.
# After a few dozen steps G's crops have the fabric's colours and dark blobs; after a few hundred
# (`GAME_STEPS`) some look like the real ones. *Try:* set `loss="hinge"` or `"lsgan"` in
# `GANStep` and re-run; remove the `BatchNorm2d` and watch G collapse to one crop.
#
# A GAN like this makes *crops*. The four methods below answer the question it leaves open:
# how do you put a learned defect *into* a given normal image, and know where it is?

# %%
normals = anoplug.open_dataset("toy:fabric", split="train", size=SIZE).batch(range(N_IMAGES))


def grid(rows: dict, title: str = "") -> None:
    """One row per entry: images [N,3,H,W] or masks [N,1,H,W] in [0, 1]."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(2.0 * N_IMAGES, 2.1 * len(rows)))
    for a, (name, x) in zip(axes, rows.items()):
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        a.imshow(torch.cat(list(x.clamp(0, 1)), 2).permute(1, 2, 0))
        a.set_ylabel(name, rotation=0, ha="right", va="center")
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(title)
    plt.show()


# %% [markdown]
# ## 2. Defect-GAN: defacement, restoration and layers
#
# One generator serves both directions. Given a normal image, a target class and a *spatial
# distribution* map (where the defect goes), it returns a foreground layer **F** and an alpha
# map **A**; the output is `A·F + (1 − A)·x`. Restoration is the same network asked for the class
# "normal": it paints the surface back over the defect. Training asks that defacing then
# restoring returns the input (the cycle), which is what keeps the background intact.

# %%
DefectGAN = get_registry().generator_class("defect-gan")
dgan = DefectGAN.from_pretrained()  # the shipped checkpoint (toy fabric, its four defect types)
print("fitted types:", dgan.types)
per_type = {}
for t in dgan.types:
    per_type[t] = dgan.generate(normals.with_conditions(defect_type=[t] * len(normals)), seed=SEED)
grid({"normal": normals.image, **{t: o.image for t, o in per_type.items()}},
     "Defect-GAN: one checkpoint, the type chosen per sample (conditions.defect_type)")
for t, o in per_type.items():  # the composition keeps every pixel outside A > 0.5 that did not visibly change
    assert set(o.label) <= {t, "good"}, (t, o.label)

# %% [markdown]
# The layers themselves: the masks below are `(A > 0.5) ∧ visible change`. Restoration (class
# "normal") is the same network asked to paint the surface back. *Look before you trust it:* the
# small shipped checkpoint restores only a little (compare the two numbers printed below); the
# cycle term trains it, and a longer fit restores more.

# %%
out = per_type[dgan.types[0]]
restored, alpha = dgan.restore(out.image, out.mask)
back = F.interpolate(restored, size=normals.size, mode="bilinear", align_corners=False)
grid({"defaced": out.image, "mask": out.mask, "restored": back,
      "|restored - normal|": (back - normals.image).abs().amax(1, keepdim=True) * 4},
     "Defect-GAN: defacement, then the restoration direction (difference to the normal x4)")
print(f"mean |defaced - normal| inside the mask: "
      f"{float(((out.image - normals.image).abs() * out.mask).sum() / out.mask.sum().clamp(min=1) / 3):.3f}; "
      f"after restoration: {float(((back - normals.image).abs() * out.mask).sum() / out.mask.sum().clamp(min=1) / 3):.3f}")

# %% [markdown]
# ## 3. DT-GAN: a defect type, many styles — across products
#
# DT-GAN (built on StarGAN v2) turns a defect type and a random code z — or a *reference defect
# image* — into a style code, and a two-path generator paints that style as a foreground over the
# product through a predicted alpha. The checkpoint was fitted on several toy textures at once,
# with defect types shared by name, so a hole learned on one product can be asked for on another.

# %%
DTGAN = get_registry().generator_class("dt-gan")
dt = DTGAN.from_pretrained()
print("fitted defect types (shared across products):", dt.types)
dtype = next(t for t in ("hole", "stain", "contamination") if t in dt.types)
styles = {f"seed {s}": dt.generate(normals.with_conditions(defect_type=[dtype] * len(normals)), seed=s).image
          for s in range(3)}
grid({"normal": normals.image, **styles}, f"DT-GAN: '{dtype}' on fabric, three style codes (three seeds)")

# %% [markdown]
# The style can also come from a real defect of *another product*: the style encoder reads the
# reference (here a toy tile defect of the same type) and the generator paints that style on fabric.
# Be honest about what you see: at this size and training length DT-GAN paints small, pale patches
# that change with the style code but do not yet look like the reference's defect; the mechanism
# (style code → foreground through alpha, background untouched) is what this cell shows.

# %%
tile = anoplug.open_dataset("toy:tile", split="test", size=SIZE)
ref_idx = [i for i in range(len(tile)) if tile.label(i) == dtype][:2]
refs = tile.batch(ref_idx)
k = len(refs)
asked = normals.with_conditions(defect_type=[dtype] * len(normals),
                                references=refs.image[None].expand(len(normals), -1, -1, -1, -1).clone(),
                                reference_masks=refs.mask[None].expand(len(normals), -1, -1, -1, -1).clone())
transferred = dt.generate(asked, seed=SEED)
grid({"reference (tile)": torch.cat([refs.image, refs.image[:1].expand(max(len(normals) - k, 0), -1, -1, -1)])[:len(normals)],
      "fabric": normals.image, "with the tile's style": transferred.image, "mask": transferred.mask},
     "DT-GAN: a tile defect's style transferred onto fabric")

# %% [markdown]
# ## 4. SDGAN: unpaired translation, a cycle, and a mask that has to be derived
#
# SDGAN learns two translators between *unpaired* sets — defect-free and defective images — with
# CycleGAN's cycle consistency and a dual-discriminator (D2) adversarial loss. It never sees a
# defect mask, so it returns none: the plugin derives one from |G(x) − x| (blurred, thresholded,
# opened; all *our assumption*) and composes the translation inside it only.

# %%
SDGAN = get_registry().generator_class("sdgan")
sd = SDGAN.from_pretrained()
raw = sd.generate(normals, seed=SEED)
side = sd.params.sizes()["resolution"]  # the translators' working side
work = F.interpolate(normals.image, size=(side, side), mode="area")
translated = sd.translate(work)
change = (translated - work).abs().amax(1, keepdim=True)
outside = raw.mask.expand_as(raw.image) == 0
assert torch.equal(raw.image[outside], normals.image[outside]), "SDGAN composes the translation inside its mask only"
grid({"normal": work, "G_nd(normal)": translated, "|change| x3": change * 3,
      "composed": F.interpolate(raw.image, size=work.shape[-2:], mode="area"),
      "derived mask": F.interpolate(raw.mask, size=work.shape[-2:], mode="nearest")},
     "SDGAN: the translator changes the whole image a little and the defect a lot")

# %% [markdown]
# ## 5. EID-GAN: a penalty for tiny outliers
#
# In extremely imbalanced data the outlier covers a tiny fraction of the image, and a plain
# DCGAN happily generates the background without it. EID-GAN adds to G's loss the difference
# between a real outlier and the *same crop* of the generated image, so G has to reproduce it.
# The plugin pastes the generated crop into a normal image (our integration with the contract)
# or returns the whole instance (`output="instance"`).

# %%
EIDGAN = get_registry().generator_class("eid-gan")
eid = EIDGAN.from_pretrained()
pasted = eid.generate(normals, seed=SEED)
whole = eid.instances([torch.Generator().manual_seed(s) for s in range(N_IMAGES)])  # G(z): whole instances
grid({"normal": normals.image, "outlier pasted": pasted.image, "mask": pasted.mask,
      "G(z) instance": F.interpolate(whole, size=normals.size, mode="bilinear", align_corners=False)},
     "EID-GAN: the generated outlier crop pasted into normal fabric, and G's whole instances")

# %% [markdown]
# ## 6. Explore a shipped checkpoint
#
# `anoplug.explore` builds sliders from the method's typed parameters; with a learned method it
# uses the shipped checkpoint. *Predict first:* with Defect-GAN's `layers` at 2, will the mask
# grow or will the defect get darker? Move the slider and check.

# %%
explorer = anoplug.explore("defect-gan", normals[list(range(min(2, N_IMAGES)))], seed=SEED,
                           show=["layers", "mask_threshold"])
assert explorer.error is None
explorer

# %% [markdown]
# ## 7. What the papers report vs what you see here
#
# - **Defect-GAN** (WACV 2021). *Paper:* 224 px, width 64, CODEBRIM concrete defects, FID and
#   classification gains. *Here:* 64 px, width 16, minutes of training on four toy fabric types;
#   blurry blobs of roughly the right colour, placed where asked.
# - **DT-GAN** (BMVC 2022). *Paper:* StarGAN-v2-sized, MVTec AD and two more datasets, up to 51 %
#   less classification error. *Here:* 64 px, style dim 16, a few toy textures; the style and the
#   reference transfer are visible, the details are coarse.
# - **SDGAN** (T-ASE 2020). *Paper:* CycleGAN-sized translators, commutator and DAGM data, no masks.
#   *Here:* 64 px translators; the derived mask is ours and imprecise by construction.
# - **EID-GAN** (TII 2023). *Paper:* outliers of ~0.05 % of the image, DCGAN, penalty λ = 0.01.
#   *Here:* 64 px and larger outliers (a 2-px outlier at 64 px is invisible), λ from the cpu preset.
#
# Each plugin's README has the measured mask precision and downstream utility next to DRAEM's,
# the training command and the loss curve of its checkpoint, and the list of design choices
# that are the paper's, a public code's, or our assumption.
