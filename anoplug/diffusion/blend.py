"""Small tensor helpers shared by the samplers: per-sample noise, step fractions, x̂0, mask resizing.

The blended-sampling variants themselves (spec §2.1) are hooks of
:mod:`anoplug.diffusion.sampling`: ``BlendBefore``, ``BlendAfter``, ``PixelX0Blend``,
``FinalComposite`` and ``ExactPaste``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["per_sample_randn", "step_index", "predicted_x0", "resize_mask"]


def per_sample_randn(shape: Sequence[int], rngs: Sequence[torch.Generator], device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise ``[len(rngs), *shape]``, row *i* drawn from ``rngs[i]`` only."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in rngs]).to(device)


def step_index(fraction: float, num_steps: int) -> int:
    """A step-count constant written as a fraction (e.g. AdaBLDM's 25 of 50 → 0.5), for any step count."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(num_steps, int(round(fraction * num_steps)))


def predicted_x0(scheduler, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """x̂0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t for an ε-predicting model."""
    a = scheduler.alphas_cumprod.to(x_t.device)[int(t)]
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``mask`` at ``size`` (nearest); returned as is when it already has that size."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask.float(), size=size, mode="nearest")
