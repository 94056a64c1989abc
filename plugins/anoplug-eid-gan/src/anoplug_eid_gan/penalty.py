"""EID-GAN's outlier penalty: the known outlier subtracted from the cropped region of the generated instance.

Li et al. (IEEE TII 2023) build an *outlier dataset* from the defective ("negative") training
images — each image multiplied by its outlier mask — and, at every iteration, crop from the
generated instance the region of a real outlier and add λ·‖ano − G_crop(z)‖ to the generator
loss. Without it the adversarial loss barely sees an outlier that covers ~0.05 % of the image,
and the GAN reproduces the background only.

The crop is expressed as a box indicator multiplied into the difference, which is the same
number as slicing ``fake[..., y0:y1, x0:x1]`` but batched over boxes of different sizes; the
gradient is therefore exactly zero outside the box (and, with ``region="mask"``, outside the
outlier's own pixels).
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["box_indicator", "mask_boxes", "centre_boxes", "shift_to", "crop_penalty", "crop_error"]

Norm = Literal["l1", "l2"]
Region = Literal["mask", "box"]


def box_indicator(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, 1, H, W]`` float map that is 1 inside ``boxes`` (``[B, 4]`` as y0, x0, y1, x1, end-exclusive)."""
    h, w = size
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    b = boxes.view(-1, 4, 1, 1)
    inside = (ys >= b[:, 0]) & (ys < b[:, 2]) & (xs >= b[:, 1]) & (xs < b[:, 3])
    return inside.unsqueeze(1).float()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """The bounding box (y0, x0, y1, x1; end-exclusive) of each non-empty ``[N, 1, H, W]`` mask, as ``[N, 4]`` long."""
    m = masks[:, 0] > 0.5
    if not bool(m.flatten(1).any(1).all()):
        raise ValueError("mask_boxes: every mask needs at least one outlier pixel")
    rows, cols = m.any(2), m.any(1)  # [N, H], [N, W]
    h, w = rows.shape[1], cols.shape[1]
    y0 = rows.float().argmax(1)
    y1 = h - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = w - cols.flip(1).float().argmax(1)
    return torch.stack([y0, x0, y1, x1], 1).long()


def centre_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The same boxes (``[N, 4]``) moved so that their centres sit at the image centre (``size // 2``)."""
    cy, cx = (boxes[:, 0] + boxes[:, 2]) // 2, (boxes[:, 1] + boxes[:, 3]) // 2
    dy, dx = size // 2 - cy, size // 2 - cx
    return boxes + torch.stack([dy, dx, dy, dx], 1)


def shift_to(x: torch.Tensor, boxes: torch.Tensor, new_boxes: torch.Tensor) -> torch.Tensor:
    """Translate each ``[N, C, H, W]`` map so that the content of ``boxes`` lands in ``new_boxes`` (same sizes)."""
    d = (new_boxes[:, :2] - boxes[:, :2]).tolist()
    return torch.stack([torch.roll(x[i], shifts=(int(dy), int(dx)), dims=(1, 2)) for i, (dy, dx) in enumerate(d)])


def _region(boxes: torch.Tensor, masks: torch.Tensor, region: Region) -> torch.Tensor:
    box = box_indicator(boxes.to(masks.device), tuple(masks.shape[-2:]))
    return box * masks if region == "mask" else box


def crop_penalty(fake: torch.Tensor, real: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, *,
                 weight: float, norm: Norm = "l1", region: Region = "mask") -> torch.Tensor:
    """λ · ‖ano − G_crop(z)‖ per generated instance, averaged over the batch (images in [0, 1]).

    ``ano = real · mask`` is the outlier (the paper's outlier dataset entry); the crop is the
    outlier's bounding box ``boxes`` on the generated instance ``fake``. ``region="mask"``
    (default, our reading) compares only the outlier's own pixels, ``mask · (G(z) − real)``
    inside the box; ``"box"`` is the literal ano − G_crop over the whole box, which also pulls the
    box's background pixels of G(z) towards the zeros of ``ano``. ``norm="l1"``: the summed
    absolute difference ‖·‖₁ (the paper's |·|); ``"l2"``: the summed squared difference.
    """
    ano = real * masks
    gen = fake * masks if region == "mask" else fake
    diff = _region(boxes, masks, region) * (gen - ano)
    per = diff.abs() if norm == "l1" else diff.square()
    return weight * per.flatten(1).sum(1).mean()


@torch.no_grad()
def crop_error(fake: torch.Tensor, real: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean absolute error on the outlier's pixels, |crop(G(z)) − outlier|, per instance (``[B]``, [0, 1] units).

    The penalty's target, normalised by the outlier's pixel count so that it reads as a
    grey-level error: what the mechanism test and the README compare with and without λ.
    """
    region = _region(boxes, masks, "mask")
    per = (region * (fake - real)).abs().flatten(1).sum(1)
    return per / (3 * region.flatten(1).sum(1)).clamp_min(1)
