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


def _footprint(p: Patches) -> tuple[torch.Tensor, ...]:
    """Flat (owner, dst row, dst col, src row, src col) of every pasted pixel."""
    dev = p.h.device
    counts = torch.where(p.active, p.box_h * p.box_w, torch.zeros_like(p.box_h))
    owner = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
    starts = torch.cumsum(counts, 0) - counts
    k = torch.arange(int(counts.sum()), device=dev) - starts[owner]
    bw = p.box_w[owner]
    u = torch.div(k, bw, rounding_mode="floor")
    v = k - u * bw
    h, w = p.h[owner], p.w[owner]
    if bool((p.angle != 0).any()):
        a = torch.deg2rad(p.angle.double())[owner]
        cos, sin = torch.cos(a), torch.sin(a)
        oy = u.double() + 0.5 - p.box_h[owner].double() / 2
        ox = v.double() + 0.5 - bw.double() / 2
        sx = torch.floor(cos * ox - sin * oy + w.double() / 2).long()
        sy = torch.floor(sin * ox + cos * oy + h.double() / 2).long()
        keep = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
        owner, u, v, sy, sx = owner[keep], u[keep], v[keep], sy[keep], sx[keep]
    else:  # unrotated: the box is the rectangle itself
        sy, sx = u, v
    return owner, p.dst_y[owner] + u, p.dst_x[owner] + v, p.src_y[owner] + sy, p.src_x[owner] + sx


def paste(image: torch.Tensor, p: Patches, *, effective_tol: float | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pasted images, footprint masks) for a batch ``[B,3,H,W]``.

    With ``effective_tol`` (grey levels out of 255) only pixels whose channel-mean change
    exceeds it are written and marked, so the mask is where the image actually changed.
    A sample whose paste changed no pixel at all gets an empty mask (it is still normal).
    """
    out = image.clone()
    mask = torch.zeros(image.shape[0], 1, *image.shape[2:], dtype=image.dtype, device=image.device)
    owner, dy, dx, sy, sx = _footprint(p)
    if owner.numel() == 0:
        return out, mask
    pixels = image[owner, :, sy, sx]  # [N,3]
    pixels = color_jitter(pixels, owner, p.jitter.to(pixels.dtype), p.order)
    before = image[owner, :, dy, dx]
    change = (pixels - before).abs()
    keep = change.mean(1) * 255.0 > effective_tol if effective_tol is not None else change.amax(1) > 0
    n_changed = torch.zeros(image.shape[0], dtype=torch.long, device=image.device).index_add_(0, owner, keep.long())
    if effective_tol is not None:
        owner, dy, dx, pixels = owner[keep], dy[keep], dx[keep], pixels[keep]
    else:  # geometric footprint, but a sample whose paste changed nothing stays normal
        keep = (n_changed > 0)[owner]
        owner, dy, dx, pixels = owner[keep], dy[keep], dx[keep], pixels[keep]
    out[owner, :, dy, dx] = pixels
    mask[owner, 0, dy, dx] = 1.0
    return out, mask
