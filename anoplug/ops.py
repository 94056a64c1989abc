"""Small tensor operations several methods share (one copy each, not one per plugin)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from anoplug.types import Batch

__all__ = ["gaussian_blur", "as_batch"]


def gaussian_blur(x: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of ``[B,C,H,W]``: kernel ``2·⌈3σ⌉+1``, reflect padding.

    Anomaly maps are smoothed this way (σ = 4) by SuperSimpleNet, PBAS and most detectors
    that follow PatchCore; inputs too small to reflect-pad are returned unchanged.
    """
    if sigma <= 0:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    t = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    w = w / w.sum()
    pad = k // 2
    if min(x.shape[-2:]) <= pad:
        return x
    c = x.shape[1]
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def as_batch(data: Any, what: str) -> Batch:
    """Accept a :class:`Batch` or an anoplug ``Dataset`` (all of it) where training data is expected."""
    if isinstance(data, Batch):
        return data
    if hasattr(data, "all") and hasattr(data, "batch"):
        return data.all()
    raise TypeError(f"{what} must be an anoplug.Batch or Dataset, got {type(data).__name__}")
