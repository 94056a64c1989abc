"""Colour jitter on the pasted pixels only, one set of factors per sample.

CutPaste jitters the *patch* (brightness, contrast, saturation and hue, each 0.1, applied
in a random order per call, as torchvision's ``ColorJitter`` does). The pixels of all
patches are held in one buffer ``[3, N]``, sample after sample; at each of the four steps the
samples applying the same operation are made contiguous, so each operation runs on a slice
(a view), the cost is proportional to the pasted area and every pixel goes through each
operation once. The formulas are torchvision's tensor ones (grey = ITU-R 601 luma, clamped blends,
hue rotated in HSV).
"""

from __future__ import annotations

import torch

from anoplug.ops import hsv_adjust

OPS = ("brightness", "contrast", "saturation", "hue")
IDENTITY = (1.0, 1.0, 1.0, 0.0)
_LUMA = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_LUMA, dtype=x.dtype, device=x.device) @ x  # [3] @ [3,N]: one pass, one buffer


def _apply_op(op: int, x: torch.Tensor, f: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """One jitter operation, in place, on ``x`` ``[3,n]`` (samples one after another, ``counts`` pixels each).

    ``f`` ``[n]`` is each pixel's factor. In-place element-wise arithmetic and segment sums
    only: ``where``, gathers, channel-axis reductions and fresh large buffers are several
    times slower here.
    """
    if op == 0:  # brightness: scale towards black
        return x.mul_(f).clamp_(0, 1)
    if op == 1:  # contrast: blend with the patch's mean grey level
        mean = torch.segment_reduce(_gray(x), "sum", lengths=counts) / counts.to(x.dtype)
        return x.mul_(f).add_(torch.repeat_interleave(mean, counts).mul_(1 - f)).clamp_(0, 1)
    if op == 2:  # saturation: blend with the pixel's grey level
        gray = _gray(x).mul_(1 - f)  # before x changes
        return x.mul_(f).add_(gray).clamp_(0, 1)
    return hsv_adjust(x, f, dim=0, out=x)  # hue rotated in place; V and chroma unchanged


def _segments(buf: torch.Tensor, arrangement: list[int], cnt: list[int]) -> dict[int, torch.Tensor]:
    """Each sample's slice (a view) of ``buf``, whose samples lie one after another in ``arrangement`` order."""
    out, a = {}, 0
    for s in arrangement:
        out[s] = buf[:, a:a + cnt[s]]
        a += cnt[s]
    return out


def color_jitter(pixels: torch.Tensor, counts: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Jitter, in place, the pixels ``[3,N]`` of several patches stored one after another.

    ``counts`` ``[S]``: pixels of each sample, in buffer order; ``factors`` ``[S,4]``:
    brightness, contrast, saturation multipliers and hue shift; ``order`` ``[S,4]``: the
    permutation of the four operations each sample applies. Step by step, the samples are
    re-arranged (one concatenation) so that those applying the same operation at this step
    are contiguous: at most 4 kernels' worth of launches per operation and step, whatever the
    batch size, instead of one set per distinct permutation (up to 24). A factor equal to the
    identity leaves its samples bit-identical (the HSV round trip is skipped or undone).
    """
    S = counts.shape[0]
    if S == 0:
        return pixels
    cnt = counts.tolist()
    perms = order.tolist()
    factors = factors.to(pixels.dtype)
    table = factors.tolist()
    # Rows 0-2: the pixels; rows 3-6: each pixel's own four factors, so both move in one concatenation.
    buf = torch.cat([pixels, torch.repeat_interleave(factors.t(), counts, dim=1)], 0)
    arrangement = list(range(S))
    for step in range(4):
        wanted = sorted(arrangement, key=lambda s: perms[s][step])  # stable
        if wanted != arrangement:
            seg = _segments(buf, arrangement, cnt)
            buf = torch.cat([seg[s] for s in wanted], dim=1)
            arrangement = wanted
        a = 0
        k = 0
        while k < S:
            op = perms[arrangement[k]][step]
            e = k
            while e < S and perms[arrangement[e]][step] == op:
                e += 1
            group = arrangement[k:e]
            b = a + sum(cnt[s] for s in group)
            is_id = [table[s][op] == IDENTITY[op] for s in group]
            if b > a and not all(is_id):
                f = buf[3 + op, a:b]
                x = buf[:3, a:b]
                keep = x.clone() if op == 3 and any(is_id) else None  # a zero hue shift stays exact
                _apply_op(op, x, f, counts[torch.tensor(group, device=pixels.device)])
                if keep is not None:
                    x.copy_(torch.where(f == 0, keep, x))
            a, k = b, e
    seg = _segments(buf, arrangement, cnt)  # back to the caller's layout
    pixels.copy_(torch.cat([seg[s][:3] for s in range(S)], dim=1) if arrangement != list(range(S)) else buf[:3])
    return pixels
