"""Colour jitter on the pasted pixels only, one set of factors per sample.

CutPaste jitters the *patch* (brightness, contrast, saturation and hue, each 0.1, in a
random order per call, as torchvision's ``ColorJitter``). Working on the flat list of
pasted pixels ``[N, 3]`` (with ``owner[n]`` = the sample each pixel belongs to) keeps the
cost proportional to the patch area, not the image area.
"""

from __future__ import annotations

import torch

OPS = ("brightness", "contrast", "saturation", "hue")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


def _gray(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0] * _LUMA[0] + x[:, 1] * _LUMA[1] + x[:, 2] * _LUMA[2]


def _segment_mean(values: torch.Tensor, owner: torch.Tensor, n_owners: int) -> torch.Tensor:
    total = torch.zeros(n_owners, dtype=values.dtype, device=values.device).index_add_(0, owner, values)
    count = torch.zeros(n_owners, dtype=values.dtype, device=values.device).index_add_(0, owner, torch.ones_like(values))
    return total / count.clamp_min(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[N,3] RGB in [0,1] -> [N,3] HSV in [0,1] (hue as a fraction of the turn)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    span = maxc - minc
    flat = span == 0
    s = span / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(span), span)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    h = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    h = torch.remainder(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = torch.remainder(sector, 6).long()
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    # per sector (0..5): which of (v, q, p, t) each channel takes
    table = torch.stack((v, q, p, t), 1)  # [N,4]
    pick = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=x.device)
    return torch.gather(table, 1, pick[sector])


def _apply_op(op: int, x: torch.Tensor, owner: torch.Tensor, factor: torch.Tensor, n_owners: int) -> torch.Tensor:
    f = factor[owner]
    if op == 0:  # brightness: scale towards black
        return (x * f[:, None]).clamp(0, 1)
    if op == 1:  # contrast: blend with the patch's mean grey level
        mean = _segment_mean(_gray(x), owner, n_owners)
        return (f[:, None] * x + (1 - f[:, None]) * mean[owner][:, None]).clamp(0, 1)
    if op == 2:  # saturation: blend with the pixel's grey level
        return (f[:, None] * x + (1 - f[:, None]) * _gray(x)[:, None]).clamp(0, 1)
    hsv = rgb_to_hsv(x)  # hue: rotate around the colour wheel
    hsv[:, 0] = torch.remainder(hsv[:, 0] + f, 1.0)
    return hsv_to_rgb(hsv)


def color_jitter(pixels: torch.Tensor, owner: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Jitter the flat pixels ``[N,3]`` of several patches at once.

    ``factors`` ``[B,4]``: brightness, contrast, saturation multipliers and hue shift per sample;
    ``order`` ``[B,4]``: the permutation of the four operations each sample applies (as
    torchvision draws one per call). Every pixel goes through each operation exactly once.
    """
    x = pixels
    n_owners = factors.shape[0]
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=factors.dtype, device=factors.device)
    # the op applied at each stage, or -1 where the factor is the identity (skipped exactly)
    staged = torch.where(factors.gather(1, order) != identity[order], order, torch.full_like(order, -1))
    for stage in range(4):
        op_here = staged[:, stage][owner]
        for op in range(4):
            idx = (op_here == op).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            if idx.numel() == x.shape[0]:
                x = _apply_op(op, x, owner, factors[:, op], n_owners)
            else:
                x = x.index_copy(0, idx, _apply_op(op, x.index_select(0, idx), owner.index_select(0, idx),
                                                   factors[:, op], n_owners))
    return x
