"""TIDSC, the Text-Image Dual-Space Constraints: two losses that steer the latent during sampling.

*Paper*: at inference, TIDSC "enforces the quality of generated images via positional
consistency and spatial smoothing alignment" (the "boundary alignment smoothing constraint" of
the title). *Our assumption* for the formulas (the method section is not reachable here), one
loss per space:

- **text space, positional consistency**: the cross-attention of the defect's concept tokens
  must lie inside the target mask. Per layer, the token's map is normalised over the pixels
  and the loss is ``1 − Σ_{mask} a`` (the share of attention outside), averaged over layers
  and tokens (the Attend-and-Excite / layout-guidance form);
- **image space, boundary smoothing**: the decoded prediction x̂0, composited over the source
  image as the output will be, must not jump where generated and kept pixels meet. The loss is
  the mean squared finite difference of the composite over a band of ``width`` px on both
  sides of the region's boundary.

Both are differentiable in the latent; :class:`anoplug.diffusion.sampling.LatentOptimization`
takes the gradient steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["positional_consistency_loss", "boundary_band", "boundary_smoothness_loss", "boundary_gradient"]


def _resize(mask: torch.Tensor, n_pixels: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    h0, w0 = latent_hw
    f = (h0 * w0 / n_pixels) ** 0.5
    h, w = max(1, round(h0 / f)), max(1, round(w0 / f))
    return F.interpolate(mask.float(), size=(h, w), mode="area").flatten(1)  # [B, h*w], soft at coarse layers


def positional_consistency_loss(maps: dict[str, torch.Tensor], mask: torch.Tensor, token_columns: torch.Tensor,
                                latent_hw: tuple[int, int], min_pixels: int = 64) -> torch.Tensor:
    """Share of the concept tokens' attention outside ``mask`` (``[B,1,h,w]``), mean over layers, tokens, samples.

    ``maps``: layer → ``[B, pixels, tokens]``; ``token_columns``: bool ``[B, tokens]``. Layers
    with fewer than ``min_pixels`` positions are too coarse to localise and are skipped.
    """
    losses = []
    for m in maps.values():
        if m.shape[1] < min_pixels:
            continue
        inside = _resize(mask.to(m.device), m.shape[1], latent_hw)  # [B, N]
        cols = token_columns[:, : m.shape[2]].to(m.device).float()  # [B, L]
        a = m / m.sum(1, keepdim=True).clamp_min(1e-8)  # normalised over pixels
        share = (a * inside[:, :, None]).sum(1)  # [B, L]
        losses.append(((1 - share) * cols).sum(1) / cols.sum(1).clamp_min(1))
    if not losses:
        raise ValueError("no cross-attention layer fine enough for the positional consistency loss")
    return torch.stack(losses).mean()


def boundary_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """``[B,1,H,W]`` 0/1: pixels within ``width`` px of the mask boundary, on either side."""
    m = (mask > 0.5).float()
    k = 2 * int(width) + 1
    grown = F.max_pool2d(m, k, stride=1, padding=width)
    shrunk = 1 - F.max_pool2d(1 - m, k, stride=1, padding=width)
    return grown - shrunk


def _finite_differences(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dy = torch.zeros_like(img)
    dx = torch.zeros_like(img)
    dy[..., 1:, :] = img[..., 1:, :] - img[..., :-1, :]
    dx[..., :, 1:] = img[..., :, 1:] - img[..., :, :-1]
    return dy, dx


def boundary_smoothness_loss(composite: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Mean squared image gradient of ``composite`` (``[B,C,H,W]``) over ``band``."""
    dy, dx = _finite_differences(composite)
    g2 = (dy ** 2 + dx ** 2).mean(1, keepdim=True)
    return (g2 * band).sum() / band.sum().clamp_min(1)


@torch.no_grad()
def boundary_gradient(image: torch.Tensor, mask: torch.Tensor, width: int = 1) -> float:
    """The measured quantity: mean |∇image| on the mask boundary band (lower = smoother seam)."""
    dy, dx = _finite_differences(image)
    g = (dy ** 2 + dx ** 2).sum(1, keepdim=True).sqrt()
    band = boundary_band(mask, width)
    return float((g * band).sum() / band.sum().clamp_min(1))
