"""Perlin gradient noise, written once for every method that needs it (DRAEM, SuperSimpleNet, ...).

anomalib carries four diverging copies of this generator; anoplug has this one. It follows
DRAEM's ``rand_perlin_2d``: a lattice of ``res`` cells per axis with a random unit gradient
at each lattice point, dot products with the offsets to the four corners, quintic fade
``6t⁵ − 15t⁴ + 10t³``, bilinear mix, scaled by √2. Sampling (the gradients, drawn from
each sample's own ``torch.Generator``) is split from evaluation (batched over samples that
share a lattice), so a sample's noise never depends on its batch.

The lattice coordinate of pixel ``i`` is ``i · res / H``; when ``res`` divides ``H`` this is
exactly DRAEM's grid, and unlike DRAEM any size works without anomalib's pad-and-crop.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["sample_scales", "sample_gradients", "perlin_noise", "rotate", "perlin_masks"]


def sample_scales(rng: torch.Generator, min_exp: int = 0, max_exp: int = 6) -> tuple[int, int]:
    """DRAEM's scale law: ``2**randint(min_exp, max_exp)`` per axis independently (high exclusive)."""
    e = torch.randint(min_exp, max_exp, (2,), generator=rng)
    return int(2 ** int(e[0])), int(2 ** int(e[1]))


def sample_gradients(rng: torch.Generator, res: tuple[int, int]) -> torch.Tensor:
    """Random unit gradients on a ``(res_y+1, res_x+1)`` lattice: ``[res_y+1, res_x+1, 2]``."""
    angles = 2 * math.pi * torch.rand(res[0] + 1, res[1] + 1, generator=rng)
    return torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _axis(n: int, res: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(n, device=device, dtype=torch.float32) * (res / n)
    cell = pos.floor().long().clamp_(max=res - 1)
    return cell, pos - cell


def _noise_same_lattice(grads: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Noise for ``k`` samples sharing one lattice shape; ``grads`` is ``[k, ry+1, rx+1, 2]``.

    Inside a cell the corner dot products are ``gy·oy + gx·ox``; mixing along x first on
    the lattice rows (a small ``[k, ry+1, W]`` array) and only then expanding rows to pixels
    keeps the full-resolution work to four row gathers and a few multiply-adds.
    """
    h, w = size
    ry, rx = grads.shape[1] - 1, grads.shape[2] - 1
    cy, fy = _axis(h, ry, grads.device)
    cx, fx = _axis(w, rx, grads.device)
    tx = _fade(fx)
    gy, gx = grads[..., 0], grads[..., 1]  # [k, ry+1, rx+1]
    gy0, gy1 = gy.index_select(2, cx), gy.index_select(2, cx + 1)  # [k, ry+1, W]
    gx0, gx1 = gx.index_select(2, cx), gx.index_select(2, cx + 1)
    # x-mixed coefficient of oy, and x-mixed constant part, per lattice row and pixel column.
    coef = torch.lerp(gy0, gy1, tx)
    const = torch.lerp(gx0 * fx, gx1 * (fx - 1), tx)
    fy_col = fy[:, None]
    top = coef.index_select(1, cy) * fy_col + const.index_select(1, cy)
    bottom = coef.index_select(1, cy + 1) * (fy_col - 1) + const.index_select(1, cy + 1)
    return math.sqrt(2) * torch.lerp(top, bottom, _fade(fy_col))


def perlin_noise(gradients: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Evaluate Perlin noise for each sample's gradient lattice: returns ``[B, H, W]`` float32.

    Samples are grouped by lattice shape so each group is one batched computation.
    """
    if not gradients:
        return torch.zeros(0, *size)
    out = torch.empty(len(gradients), *size, dtype=torch.float32, device=gradients[0].device)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, g in enumerate(gradients):
        groups[tuple(g.shape)].append(i)
    for idx in groups.values():
        stacked = torch.stack([gradients[i] for i in idx])
        out[idx] = _noise_same_lattice(stacked, size)
    return out


def rotate(x: torch.Tensor, degrees: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Rotate ``[B,C,H,W]`` about the centre by per-sample ``degrees`` (counter-clockwise), fill 0.

    The sampling grid is two broadcast multiply-adds per coordinate (a ``[B,1,W]`` row term plus a
    ``[B,H,1]`` column term), cheaper on CPU than ``affine_grid`` or a batched matmul with K=2;
    pixel centres follow ``align_corners=False`` and the aspect ratio is respected.
    """
    b, _, h, w = x.shape
    theta = torch.deg2rad(degrees.to(device=x.device, dtype=x.dtype))
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    xs = ((torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1)[None, None, :]
    ys = ((torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1)[None, :, None]
    # Rotate in pixel units (x scaled by w/2, y by h/2): the sampling point of output pixel (x, y).
    grid = torch.empty(b, h, w, 2, device=x.device, dtype=x.dtype)
    torch.add(xs * cos, ys * (-sin * (h / w)), out=grid[..., 0])
    torch.add(xs * (sin * (w / h)), ys * cos, out=grid[..., 1])
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def perlin_masks(gradients: Sequence[torch.Tensor], size: tuple[int, int], threshold: float,
                 degrees: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise ``[B,1,H,W]`` after optional rotation, binary mask ``noise > threshold``)."""
    noise = perlin_noise(gradients, size)[:, None]
    if degrees is not None:
        noise = rotate(noise, degrees)
    return noise, (noise > threshold).float()
