"""Cut a (rotated) rectangle out of each image and paste it elsewhere, batched.

All patches of a batch are handled as one flat list of destination pixels, so the cost
is proportional to the pasted area (a few percent of the image) plus one copy of the
batch. For each destination pixel of a patch's bounding box we rotate back into the
source rectangle with nearest-neighbour lookup (as PIL's ``rotate(expand=True)`` with
NEAREST does) and keep the pixel if it falls inside: the set of kept pixels is the paste
footprint, which becomes the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anoplug_cutpaste.jitter import color_jitter


def rotated_box(h: int, w: int, angle_deg: float) -> tuple[int, int]:
    """Height and width of the box that holds an h×w rectangle rotated by ``angle_deg``."""
    if angle_deg == 0:
        return h, w
    a = math.radians(angle_deg)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    return max(1, math.ceil(h * c + w * s - 1e-6)), max(1, math.ceil(h * s + w * c - 1e-6))


@dataclass
class Patches:
    """Geometry and jitter of one patch per sample (tensors of length B)."""

    active: torch.Tensor  # bool: sample gets a patch
    src_y: torch.Tensor
    src_x: torch.Tensor
    h: torch.Tensor  # source rectangle size
    w: torch.Tensor
    angle: torch.Tensor  # degrees, counter-clockwise
    dst_y: torch.Tensor  # top-left of the destination bounding box
    dst_x: torch.Tensor
    box_h: torch.Tensor  # destination bounding box size
    box_w: torch.Tensor
    jitter: torch.Tensor  # [B,4] brightness, contrast, saturation factors, hue shift
    order: torch.Tensor  # [B,4] permutation of the jitter operations


def _footprint(p: Patches, idx: list[int]) -> tuple[torch.Tensor, ...]:
    """Flat (owner, dst row, dst col, src row, src col) of every pasted pixel of rotated patches ``idx``."""
    dev = p.h.device
    sel = torch.tensor(idx, dtype=torch.long, device=dev)
    box_h, box_w, h, w = p.box_h[sel], p.box_w[sel], p.h[sel], p.w[sel]
    counts = box_h * box_w
    local = torch.repeat_interleave(torch.arange(len(idx), device=dev), counts)
    starts = torch.cumsum(counts, 0) - counts
    k = torch.arange(int(counts.sum()), device=dev) - starts[local]
    bw = box_w[local]
    u = torch.div(k, bw, rounding_mode="floor")
    v = k - u * bw
    a = torch.deg2rad(p.angle[sel].double())[local]
    cos, sin = torch.cos(a), torch.sin(a)
    oy = u.double() + 0.5 - box_h[local].double() / 2
    ox = v.double() + 0.5 - bw.double() / 2
    sx = torch.floor(cos * ox - sin * oy + w[local].double() / 2).long()
    sy = torch.floor(sin * ox + cos * oy + h[local].double() / 2).long()
    keep = (sy >= 0) & (sy < h[local]) & (sx >= 0) & (sx < w[local])
    local, u, v, sy, sx = local[keep], u[keep], v[keep], sy[keep], sx[keep]
    owner = sel[local]
    return owner, p.dst_y[owner] + u, p.dst_x[owner] + v, p.src_y[owner] + sy, p.src_x[owner] + sx


def _changed(new: torch.Tensor, before: torch.Tensor, effective_tol: float | None) -> torch.Tensor:
    """Per pixel: does it count as changed (any change, or channel-mean change > tol grey levels)?"""
    if effective_tol is None:
        return (new != before).any(0)
    return (new - before).abs().mean(0) * 255.0 > effective_tol


def paste(image: torch.Tensor, p: Patches, *, effective_tol: float | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pasted images, footprint masks) for a batch ``[B,3,H,W]``.

    Unrotated patches are moved with slice copies; rotated ones through flat pixel indices.
    With ``effective_tol`` (grey levels out of 255) only pixels whose channel-mean change
    exceeds it are written and marked, so the mask is where the image actually changed.
    A sample whose paste changed no pixel at all keeps an empty mask (it stays normal).
    """
    out = image.clone()
    mask = torch.zeros(image.shape[0], 1, *image.shape[2:], dtype=image.dtype, device=image.device)
    active = p.active.tolist()
    angle = p.angle.tolist()
    order = p.order.tolist()
    flat_idx = sorted((i for i in range(len(active)) if active[i] and angle[i] == 0), key=lambda i: order[i])
    rot_idx = sorted((i for i in range(len(active)) if active[i] and angle[i] != 0), key=lambda i: order[i])

    if flat_idx:  # rectangles: gather by slicing into one [3, N] buffer, jitter, copy back
        hs, ws = p.h.tolist(), p.w.tolist()
        sy, sx, dy, dx = p.src_y.tolist(), p.src_x.tolist(), p.dst_y.tolist(), p.dst_x.tolist()
        counts = [hs[i] * ws[i] for i in flat_idx]
        buf = torch.empty(2, 3, sum(counts), dtype=image.dtype, device=image.device)  # [patch, what it covers]
        a = 0
        for i, n in zip(flat_idx, counts):
            buf[0, :, a:a + n].view(3, hs[i], ws[i]).copy_(image[i, :, sy[i]:sy[i] + hs[i], sx[i]:sx[i] + ws[i]])
            buf[1, :, a:a + n].view(3, hs[i], ws[i]).copy_(image[i, :, dy[i]:dy[i] + hs[i], dx[i]:dx[i] + ws[i]])
            a += n
        sel = torch.tensor(flat_idx, device=image.device)
        cnt = torch.tensor(counts, device=image.device)
        new = color_jitter(buf[0], cnt, p.jitter[sel], p.order[sel])
        keep = _changed(new, buf[1], effective_tol)
        if effective_tol is None:  # geometric footprint, unless the sample changed nothing at all
            owner = torch.repeat_interleave(torch.arange(len(flat_idx), device=image.device), cnt)
            any_change = torch.zeros(len(flat_idx), dtype=torch.long, device=image.device).index_add_(0, owner, keep.long())
            writes = (any_change > 0).tolist()
        else:
            new = torch.where(keep, new, buf[1])
            writes = [True] * len(flat_idx)
        a = 0
        for i, n, w in zip(flat_idx, counts, writes):
            if w:
                out[i, :, dy[i]:dy[i] + hs[i], dx[i]:dx[i] + ws[i]].copy_(new[:, a:a + n].view(3, hs[i], ws[i]))
                region = mask[i, 0, dy[i]:dy[i] + hs[i], dx[i]:dx[i] + ws[i]]
                if effective_tol is None:
                    region.fill_(1.0)
                else:
                    region.copy_(keep[a:a + n].view(hs[i], ws[i]))
            a += n

    if rot_idx:  # rotated strips: nearest-neighbour footprint through flat indices
        owner, ddy, ddx, ssy, ssx = _footprint(p, rot_idx)
        counts = torch.bincount(owner, minlength=len(active))[torch.tensor(rot_idx, device=image.device)]
        pixels = image[owner, :, ssy, ssx].t()  # [3, N], owners in rot_idx order
        sel = torch.tensor(rot_idx, device=image.device)
        pixels = color_jitter(pixels, counts, p.jitter[sel], p.order[sel])
        before = image[owner, :, ddy, ddx].t()
        keep = _changed(pixels, before, effective_tol)
        if effective_tol is None:  # geometric footprint, unless the sample changed nothing at all
            n_changed = torch.zeros(len(active), dtype=torch.long, device=image.device).index_add_(0, owner, keep.long())
            keep = (n_changed > 0)[owner]
        owner, ddy, ddx, pixels = owner[keep], ddy[keep], ddx[keep], pixels[:, keep]
        out[owner, :, ddy, ddx] = pixels.t()
        mask[owner, 0, ddy, ddx] = 1.0
    return out, mask
