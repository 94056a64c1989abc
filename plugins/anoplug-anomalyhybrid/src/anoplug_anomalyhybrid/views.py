"""Step 3 of AnomalyHybrid: the augmented views that make training unsupervised.

*paper*: the generator is trained on the colour, depth and edge maps of the *same* image
under *different* augmentations — local thin-plate-spline (TPS) warps, resize–translate–pad
and top-bottom / left-right flips — and the generated content shares the augmentation of the
target condition it is generated for. Nothing is annotated: the only "anomaly" the network
ever sees is the local disagreement between the content view and a condition view, and the
fusion map learns to mark exactly that disagreement.

*our assumption* (the paper gives no numbers): a view is a shared base augmentation (one
flip draw + one resize–translate–pad draw, common to the three views, i.e. ordinary data
augmentation) followed by a view-specific part: a local TPS warp (a 5×5 grid of fixed
anchors of which ``tps_points`` interior anchors move by up to ``tps_strength`` of the
half-width) — always for the content view, with probability ``cond_tps_prob`` for each
condition view — and, for the content view only, with probability ``geo_prob`` an extra flip
or resize–translate–pad, so some pairs disagree everywhere (global transfer) and most
disagree in one or two small places (local edits). Warps that moved most of the image in
every pair taught the fusion map to regenerate everything (measured on a first run).

Every draw comes from the caller's ``torch.Generator``; the warps are batched
(``kornia.geometry.transform`` TPS, ``torch.nn.functional.grid_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_tps_transform, warp_image_tps

__all__ = ["ViewParams", "tps_anchors", "draw_tps", "tps_warp", "draw_affine", "affine_warp", "View", "draw_view",
           "apply_view"]

GRID = 5  #: anchors per side of the TPS control grid


@dataclass(frozen=True)
class ViewParams:
    """The augmentation's knobs (see the module docstring for what is paper and what is ours)."""

    tps_points: int = 1
    tps_strength: float = 0.15
    geo_prob: float = 0.1
    scale_min: float = 0.8
    cond_tps_prob: float = 0.5


def tps_anchors(device: torch.device | None = None) -> torch.Tensor:
    """The ``GRID × GRID`` control points in grid_sample's normalised frame, ``[GRID², 2]`` (x, y)."""
    t = torch.linspace(-1.0, 1.0, GRID, device=device)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], -1)


def draw_tps(n: int, g: torch.Generator, p: ViewParams) -> torch.Tensor:
    """Displacements ``[n, GRID², 2]``: ``tps_points`` interior anchors moved, every other anchor fixed (local)."""
    interior = torch.tensor([r * GRID + c for r in range(1, GRID - 1) for c in range(1, GRID - 1)])
    disp = torch.zeros(n, GRID * GRID, 2)
    for i in range(n):
        pick = interior[torch.randperm(len(interior), generator=g)[: p.tps_points]]
        disp[i, pick] = (torch.rand(len(pick), 2, generator=g) * 2 - 1) * p.tps_strength
    return disp


def tps_warp(x: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Warp ``x`` [B,C,H,W]: the output at each anchor shows the input at anchor + ``disp`` (border padding)."""
    src = tps_anchors(x.device).expand(len(x), -1, -1)
    dst = src + disp.to(x.device, x.dtype)
    if not bool(disp.any()):
        return x
    # kornia's convention (its warp_image_tps docstring): weights from get_tps_transform(dst, src), kernels
    # centred on the fixed anchors; the output at an anchor samples the input at anchor + disp. Checked: with
    # one anchor moved, pixels far from it stay put (the other pairing moves the whole image).
    kw, aw = get_tps_transform(dst, src)
    return warp_image_tps(x, src, kw, aw, padding_mode="border")


def draw_affine(n: int, g: torch.Generator, p: ViewParams) -> torch.Tensor:
    """Per sample ``[flip_lr, flip_tb, scale, tx, ty]`` ``[n, 5]``: a flip draw and a resize–translate–pad draw."""
    u = torch.rand(n, 5, generator=g)
    flips = (u[:, :2] < 0.5).float()
    scale = p.scale_min + (1 - p.scale_min) * u[:, 2]
    room = 1 - scale  # translation that keeps the resized image inside the frame (the rest is padding)
    shift = (u[:, 3:] * 2 - 1) * room[:, None]
    return torch.cat([flips, scale[:, None], shift], 1)


def affine_warp(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Flip, then resize by ``scale`` about the centre, translate, and pad (reflection) — one grid_sample."""
    a = a.to(x.device, x.dtype)
    sx = torch.where(a[:, 0] > 0.5, -1.0, 1.0) / a[:, 2]
    sy = torch.where(a[:, 1] > 0.5, -1.0, 1.0) / a[:, 2]
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2], theta[:, 1, 2] = -a[:, 3] / a[:, 2], -a[:, 4] / a[:, 2]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@dataclass
class View:
    """One view's drawn augmentation: the shared base, an optional own affine, and its local TPS."""

    base: torch.Tensor  # [n, 5]
    own: torch.Tensor  # [n, 5]
    use_own: torch.Tensor  # [n] bool
    tps: torch.Tensor  # [n, GRID², 2]


IDENTITY = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])


def draw_view(base: torch.Tensor, g: torch.Generator, p: ViewParams, *, geo_prob: float, tps_prob: float) -> View:
    """A view on top of the shared ``base``: its own affine with probability ``geo_prob``, a TPS warp with ``tps_prob``."""
    n = len(base)
    own = draw_affine(n, g, p)
    use_own = torch.rand(n, generator=g) < geo_prob
    warp = (torch.rand(n, generator=g) < tps_prob).float()[:, None, None]
    return View(base, own, use_own, draw_tps(n, g, p) * warp)


def apply_view(x: torch.Tensor, v: View) -> torch.Tensor:
    """The view of ``x``: base affine, then (where drawn) the view's own affine, then the local TPS warp."""
    y = affine_warp(x, v.base)
    own = torch.where(v.use_own[:, None], v.own, IDENTITY.expand_as(v.own))
    y = affine_warp(y, own)
    return tps_warp(y, v.tps)
