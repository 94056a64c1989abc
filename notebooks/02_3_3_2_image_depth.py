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
# # 02.3.3.2 · Image + depth: AnomalyHybrid puts an appearance onto a depth and edge structure
#
# **Objectives.**
# 1. See depth as a *condition*: the toy `surface3d` mat comes with its own height map, and a
#    generator can be told "the surface is dented here" by editing that map, not the pixels.
# 2. Run AnomalyHybrid's two decoders side by side from its shipped checkpoint — AHD reads the
#    depth, AHE the edge map — and look at what each predicts: an anomaly source `A_gen` and a
#    fusion map `M_gen`, composed as `A_out = C_in·(1 − M) + A_gen·M`.
# 3. Edit the depth (a dent, a protrusion, growing amplitude) and measure what the output does;
#    then explore the parameters with a widget.
#
# **Runtime budget.** About 20 s on a laptop CPU (smoke mode: under 20 s). No GPU, no download:
# the checkpoint is 1.9 MB of safetensors inside `anoplug-anomalyhybrid`, and generation takes
# a few hundredths of a second per 64 px image.
#
# **Why depth?** A dent or a bump is a change of *shape*. Methods that only see RGB must paint
# its shading by hand; a method conditioned on depth can be asked for the shape and left to
# render it. AnomalyHybrid (Zhao, CVPR 2025 SyntaGen workshop) is the survey's image–depth
# method; no official code exists, so the plugin is a reconstruction whose choices are marked
# *paper* / *our assumption* in its README.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("ANOPLUG_SMOKE", "0") not in ("", "0")
N_IMAGES = 3 if SMOKE else 6  # held-out normal mats per figure
SIZE = 64  # the shipped checkpoint's working size (cpu preset); larger inputs are resized to it and back
STRENGTHS = (0.4, 1.5) if SMOKE else (0.4, 0.8, 1.5, 2.5)  # depth-edit amplitudes, fraction of the depth range
SEED = 0

# %% [markdown]
# ## 1. Depth as a condition
#
# `toy:surface3d` is a studded rubber mat rendered from a height map; the dataset returns that map
# as `batch.depth` (larger = farther), like MVTec 3D-AD's xyz z channel. We take the *test*
# split's good images: the checkpoint was trained on the train split only. AnomalyHybrid works on
# the depth normalised per image and on an edge map (Sobel here, standing in for the paper's
# PiDiNet). In the depth column the studs are the dark (near) dots on a gently undulating base;
# the edge map rings each stud.

# %%
import matplotlib.pyplot as plt
import torch
from anoplug_anomalyhybrid.anomalyhybrid import AnomalyHybrid

import anoplug

held_out = anoplug.open_dataset("toy:surface3d", split="test", size=SIZE).all()
normals = held_out[[i for i, lab in enumerate(held_out.label) if lab == "good"][:N_IMAGES]]
assert normals.depth is not None and normals.depth.shape == (N_IMAGES, 1, SIZE, SIZE), "surface3d carries depth"

ah = AnomalyHybrid.from_pretrained("surface3d")
image, depth, edge = ah.structure(normals)  # working-size image, normalised depth, Sobel edges


def show(columns: dict, title: str, cmap: dict | None = None) -> None:
    """One row per image, one column per named [B,C,H,W] tensor (1-channel ones in a colour map)."""
    n = next(iter(columns.values())).shape[0]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.9 * len(columns), 1.9 * n), squeeze=False)
    for j, (name, t) in enumerate(columns.items()):
        for i in range(n):
            x = t[i].detach().float()
            ax = axes[i][j]
            if x.shape[0] == 1:
                ax.imshow(x[0], cmap=(cmap or {}).get(name, "gray"))
            else:
                ax.imshow(x.permute(1, 2, 0).clamp(0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    plt.tight_layout()
    plt.show()


show({"image": image, "depth (dataset)": depth, "edges (Sobel)": edge}, "toy:surface3d: the image and its structure",
     cmap={"depth (dataset)": "viridis"})

# %% [markdown]
# ## 2. The two decoders side by side
#
# One encoder reads `cat(C_in, depth, edge)`; the **depth decoder (AHD)** and the **edge decoder
# (AHE)** each re-read their own condition at every scale and end in two heads, `A_gen` and `M_gen`.
# Below, on the same disk, AHD is given a *dented* depth map and AHE an edge map with a crack-like
# stroke drawn in; we call the network directly to see both decoders' raw outputs, then the
# composed images the generator returns.

# %%
yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
centres = [(0.35, 0.4), (0.6, 0.55), (0.45, 0.65), (0.5, 0.35), (0.4, 0.5), (0.6, 0.4)][:N_IMAGES]
disk = torch.stack([((yy - cy * SIZE) ** 2 + (xx - cx * SIZE) ** 2 <= (0.16 * SIZE) ** 2).float()[None]
                    for cy, cx in centres])
batch = normals.with_conditions(target_mask=disk)


def with_params(**update) -> AnomalyHybrid:
    g = AnomalyHybrid.from_pretrained("surface3d")
    g.params = g.Params(**{**g.params.model_dump(), **update})
    return g


ahd, ahe = with_params(decoder="depth", edit="dent", edit_jitter=0.0), with_params(decoder="edge")
rngs = lambda: [torch.Generator().manual_seed(SEED + i) for i in range(N_IMAGES)]  # noqa: E731
rec_d, rec_e = ahd.sample(batch, rngs()), ahe.sample(batch, rngs())
dented, _ = ahd.edited(depth, edge, ahd.regions(batch, rec_d), rec_d)
_, cracked = ahe.edited(depth, edge, ahe.regions(batch, rec_e), rec_e)
with torch.no_grad():
    res_d = ahd.G(image, dented, edge)  # AHD's heads are the ones that read the edited depth
    res_e = ahd.G(image, depth, cracked)  # AHE's heads are the ones that read the edited edges
out_d, out_e = ahd.generate(batch, seed=SEED), ahe.generate(batch, seed=SEED)
assert not torch.allclose(res_d["depth_source"], res_e["edge_source"]), "two decoders, two different predictions"
show({"edited depth": dented, "AHD A_gen": res_d["depth_source"], "AHD M_gen": res_d["depth_fusion"],
      "AHD output": out_d.image, "edited edges": cracked, "AHE A_gen": res_e["edge_source"],
      "AHE M_gen": res_e["edge_fusion"], "AHE output": out_e.image},
     "AHD (depth, dent) vs AHE (edges, crack stroke) on the same disk",
     cmap={"edited depth": "viridis", "AHD M_gen": "magma", "AHE M_gen": "magma"})

# %% [markdown]
# Reading the figure: both `A_gen` heads re-render the whole mat (darker, studs as holes in AHD's),
# and neither `M_gen` rises on the smooth disk — they fire on stud rims across the image, AHE's more
# widely. That is why the plugin fuses the edited region in by default (`fusion="union"`, *our
# assumption*): `A_gen` fills the disk, the edit says where. The AHE output carries a faint,
# stroke-shaped mark inside the disk; AHD's output is section 3's subject.

# %% [markdown]
# ## 3. A depth edit and what the output does (asserting cell)
#
# The same disks, `edit="dent"` (the depth pushed farther) and `edit="protrusion"` (nearer), at
# growing amplitude, and a **control**: the same disk fused in the same way but the depth left
# unedited (`edit_strength=0`). The control matters: `A_gen` is not an identity copy of `C_in`,
# so re-rendering the disk changes it even without an edit. Measured inside the disk: the mean
# absolute change against the input, the mean change against the *control* (what the depth edit
# itself adds), and the mean brightness change. The claims checked:
#
# - outside the mask the output is the input **bit for bit** (`preserves_outside_mask`);
# - what the edit adds grows with its amplitude, for dents and protrusions;
# - the sign of the depth edit shows: a protrusion (nearer) comes out darker than the control,
#   a dent (farther) lighter.

# %%
def disk_mean(x):
    return float((x * disk).sum() / disk.sum())


control = with_params(decoder="depth", edit="dent", edit_strength=0.0).generate(batch, seed=SEED)
results, outputs = {}, {}
for edit in ("dent", "protrusion"):
    for s in STRENGTHS:
        out = with_params(decoder="depth", edit=edit, edit_jitter=0.0, edit_strength=s).generate(batch, seed=SEED)
        keep = (out.mask == 0).expand_as(out.image)
        assert torch.equal(out.image[keep], normals.image[keep]), "outside the mask: the input, bit for bit"
        outputs[(edit, s)] = out
        results[(edit, s)] = (disk_mean((out.image - normals.image).abs().mean(1, keepdim=True)),
                              disk_mean((out.image - control.image).abs().mean(1, keepdim=True)),
                              disk_mean((out.image - control.image).mean(1, keepdim=True)))
results[("control", 0.0)] = (disk_mean((control.image - normals.image).abs().mean(1, keepdim=True)), 0.0, 0.0)

print(f"{'edit':11s}{'amplitude':>10s}{'|Δ| vs input':>14s}{'|Δ| vs control':>16s}{'brightness vs control':>23s}")
for (edit, s), (vs_in, vs_ctl, bright) in results.items():
    print(f"{edit:11s}{s:10.1f}{vs_in:14.4f}{vs_ctl:16.4f}{bright:+23.4f}")

lo, hi = min(STRENGTHS), max(STRENGTHS)
for edit in ("dent", "protrusion"):
    assert results[(edit, hi)][1] > results[(edit, lo)][1] > 0, f"{edit}: a deeper edit adds more change"
assert results[("protrusion", hi)][2] < 0 < results[("dent", hi)][2], "nearer comes out darker, farther lighter"

show({"input": normals.image, "control": control.image,
      **{f"{e} {s}": outputs[(e, s)].image for e in ("dent", "protrusion") for s in STRENGTHS}},
     "control (disk re-rendered, depth unedited), then dent and protrusion at growing amplitude")

# %% [markdown]
# What the numbers and the grid show (looked at in smoke mode, 3 mats): the change is confined to
# the disk (outside it exactly zero). Re-rendering the disk *without* an edit already moves it: in
# the control column the studs inside the disk come back as dark pits — so dark pits alone are not
# evidence of a dent. What the depth edit *adds* grows with its amplitude. The **protrusion**
# (nearer) darkens the disk, into a solid dark blob at 1.5; the **dent** (farther) comes out
# lighter than the control: the pits fade into a flat, slightly lighter patch with a faint green
# rim. Neither is a physically shaded shape — 64 training images and 18 CPU-minutes taught the
# network to re-render studs, not to shade a new surface — but the output follows the sign and
# the size of the depth edit. The mask is `fusion > 0.25 ∧ visible change`, so it never claims an
# unchanged pixel.

# %% [markdown]
# ## 4. Explore
#
# `anoplug.explore` uses the shipped checkpoint of a learned method. *Predict first:* switch
# `decoder` to `edge` — will the change follow the studs or cut across them? Then raise
# `edit_strength` with `decoder=depth`.

# %%
explorer = anoplug.explore("anomalyhybrid", normals[[0, 1]], seed=SEED,
                           show=["decoder", "edit", "edit_strength", "mask_threshold"])
assert explorer.error is None and explorer.result is not None and explorer.result.mask.any()
explorer

# %% [markdown]
# ## What the paper reports vs what you see here
#
# - **Paper** (AnomalyHybrid, arXiv 2504.04340): 256-px-class MVTec AD and MVTec 3D-AD images,
#   depth from Depth-Anything-V2 (or the dataset's), edges from PiDiNet; generated anomalies with
#   IS 2.06 / IC-LPIPS 0.32, and a detector trained on them reaching 97.3 image-level / 72.9
#   pixel-level AP on MVTec AD. Global mode transfers a reference's appearance onto a target's
#   structure; local mode manipulates the target's depth (dents, protrusions) or edges.
# - **Here**: the `cpu` preset (64 px, width 16, 3 scales) trained for 1500 steps on 64 normal
#   toy mats, no anomalies, no masks; Sobel edges; the dataset's own depth. The decoders do follow
#   their condition — the disk changes only where, and as much as, the depth or edge map was
#   edited, and what an edit adds grows with its amplitude — but the renderings are coarse
#   (dark blobs and pits, not shaded dents), and re-rendering alone already changes the disk.
# - **Our assumptions** that shape what you see: the fusion map at local inference is
#   `max(M_gen, edit profile)` (`fusion="union"`: the trained `M_gen` alone hardly rises on a
#   smooth disk; `fusion="model"` gives the pure mechanism), a sparsity prior on `M_gen` in
#   the shipped checkpoint, and every width, loss weight and augmentation number (no code is
#   public). The plugin README lists each one.
# - Not measured here: IS, LPIPS and the downstream AP (no MVTec data, no GPU). Mask precision is
#   perfect by construction (leakage 0, coverage 1: see `docs/evaluation.md`'s cross-plugin table).
