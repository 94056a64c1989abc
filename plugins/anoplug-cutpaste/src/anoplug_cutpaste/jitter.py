"""Colour jitter on the pasted pixels only, one set of factors per sample.

CutPaste jitters the *patch* (brightness, contrast, saturation and hue, each 0.1, applied
in a random order per call, as torchvision's ``ColorJitter`` does). The pixels of all
patches are held in one buffer ``[3, N]``, sample after sample; samples that share the same
operation order form runs, and each run gets its four operations on a slice (a view), so
the cost is proportional to the pasted area and every pixel goes through each operation
once. The formulas are torchvision's tensor ones (grey = ITU-R 601 luma, clamped blends,
hue rotated in HSV).
"""

from __future__ import annotations

import torch

OPS = ("brightness", "contrast", "saturation", "hue")
IDENTITY = (1.0, 1.0, 1.0, 0.0)
_LUMA = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return x[0] * _LUMA[0] + x[1] * _LUMA[1] + x[2] * _LUMA[2]


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[3,N] RGB in [0,1] -> [3,N] HSV in [0,1] (hue as a fraction of the turn)."""
    r, g, b = x.unbind(0)
    maxc, _ = x.max(0)
    minc, _ = x.min(0)
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
    return torch.stack((h, s, maxc), 0)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(0)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = torch.remainder(sector, 6).long()
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    table = torch.stack((v, q, p, t), 0)  # [4,N]; per sector, which of them each channel takes
    pick = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=x.device)
    return torch.gather(table, 0, pick[sector].t())


def _apply_op(op: int, x: torch.Tensor, f: torch.Tensor, owner: torch.Tensor, n_owners: int) -> torch.Tensor:
    """One jitter operation on ``x`` ``[3,n]`` with per-pixel factor ``f`` ``[n]``."""
    if op == 0:  # brightness: scale towards black
        return (x * f).clamp_(0, 1)
    if op == 1:  # contrast: blend with the patch's mean grey level
        gray = _gray(x)
        total = torch.zeros(n_owners, dtype=x.dtype, device=x.device).index_add_(0, owner, gray)
        count = torch.bincount(owner, minlength=n_owners).to(x.dtype)
        mean = (total / count.clamp_min(1))[owner]
        return (f * x + (1 - f) * mean).clamp_(0, 1)
    if op == 2:  # saturation: blend with the pixel's grey level
        return (f * x + (1 - f) * _gray(x)).clamp_(0, 1)
    hsv = rgb_to_hsv(x)  # hue: rotate around the colour wheel
    hsv[0] = torch.remainder(hsv[0] + f, 1.0)
    out = hsv_to_rgb(hsv)
    return torch.where(f == 0, x, out)  # a zero shift is exactly the identity (the HSV round trip is not)


def color_jitter(pixels: torch.Tensor, counts: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Jitter the pixels ``[3,N]`` of several patches stored one after another.

    ``counts`` ``[S]``: pixels of each sample, in buffer order; ``factors`` ``[S,4]``:
    brightness, contrast, saturation multipliers and hue shift; ``order`` ``[S,4]``: the
    permutation of the four operations each sample applies. Sorting samples by ``order``
    beforehand makes the runs long (fewer, larger kernels); any order is correct.
    """
    out = pixels.clone()
    S = counts.shape[0]
    if S == 0:
        return out
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    cnt = counts.tolist()
    perms = [tuple(p) for p in order.tolist()]
    identity = torch.tensor(IDENTITY, dtype=factors.dtype, device=factors.device)
    s = 0
    while s < S:
        e = s
        while e < S and perms[e] == perms[s]:
            e += 1
        a, b = starts[s], starts[e - 1] + cnt[e - 1]
        if b > a:
            owner = torch.repeat_interleave(torch.arange(e - s, device=pixels.device), counts[s:e])
            x = out[:, a:b]
            for op in perms[s]:
                fs = factors[s:e, op]
                if bool((fs == identity[op]).all()):
                    continue
                x = _apply_op(op, x, fs.to(pixels.dtype)[owner], owner, e - s)
            out[:, a:b] = x
        s = e
    return out
