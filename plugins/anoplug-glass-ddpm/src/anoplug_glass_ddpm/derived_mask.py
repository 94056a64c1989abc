"""A mask for a generated defect image, derived against its nearest normal — an *extension*, not the paper.

The paper's DDPM generates whole defective images and gives them an image-level label only:
there is no mask, by design. Users who still want a region can ask for one: the nearest
normal image of a bank (kept at ``fit``) is found by RMS distance after a light blur, and the
mask is where the blurred images differ by more than a threshold in some channel. Everything
here is our assumption; the README measures how well the rule recovers the true masks of real
toy defects, where those are known.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anoplug.ops import gaussian_blur

__all__ = ["nearest_normal", "nearest_normal_mask"]


def _prepared(x: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """``x`` at ``size`` (bilinear, antialiased when shrinking), blurred so pixel noise does not count as change."""
    if tuple(x.shape[-2:]) != tuple(size):
        down = size[0] < x.shape[-2]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)
    return gaussian_blur(x, sigma) if sigma > 0 else x


def nearest_normal(images: torch.Tensor, bank: torch.Tensor, *, sigma: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Index ``[B]`` of each image's nearest normal in ``bank`` ``[K,3,h,w]`` and that RMS distance ``[B]``.

    Both are compared at the images' size after a Gaussian blur of ``sigma`` pixels.
    """
    if len(bank) == 0:
        raise ValueError("the normal bank is empty: fit with normals to derive masks against them")
    size = (int(images.shape[-2]), int(images.shape[-1]))
    a = _prepared(images.float(), size, sigma).flatten(1)
    b = _prepared(bank.float().to(images.device), size, sigma).flatten(1)
    d = torch.cdist(a, b) / a.shape[1] ** 0.5
    dist, idx = d.min(1)
    return idx, dist


def nearest_normal_mask(images: torch.Tensor, bank: torch.Tensor, *, threshold: float = 0.08,
                        sigma: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary mask ``[B,1,H,W]`` where each image departs from its nearest normal, and that normal's index.

    A pixel is in the mask when some channel of the blurred image differs from the blurred
    nearest normal by more than ``threshold``. When no pixel does (a faint defect), the pixels
    within half of the largest difference are taken, so a defect image never leaves with an
    empty mask (our assumption; the kit requires a mask for every anomalous label).
    """
    idx, _ = nearest_normal(images, bank, sigma=sigma)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    a = _prepared(images.float(), size, sigma)
    b = _prepared(bank.float().to(images.device)[idx], size, sigma)
    diff = (a - b).abs().amax(1, keepdim=True)
    peak = diff.flatten(1).amax(1).view(-1, 1, 1, 1)
    cut = torch.where(peak > threshold, torch.full_like(peak, threshold), 0.5 * peak)
    mask = (diff > cut) & (peak > 0)
    return mask.float(), idx
