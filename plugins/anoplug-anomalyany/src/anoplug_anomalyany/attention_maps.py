"""The anomaly token's cross-attention map, computed as Attend-and-Excite computes it (official code).

From the captured maps (``layer -> [B, pixels, tokens]``, head-averaged, conditional half):

1. keep the layers at ``res × res`` (16 in the official code: the down, mid and up layers of that
   size) and average them;
2. drop the first (BOS) and the last text position, multiply by 100 and take a softmax over the
   remaining tokens (a sharpened share of attention per pixel);
3. take the anomaly token's column (shifted by one for the dropped BOS);
4. smooth it with Attend-and-Excite's 3×3 Gaussian (σ = 0.5; its kernel is
   ``exp(−((x−μ)/(2σ))²)``, normalised, with reflect padding);
5. the loss is ``max(0, 1 − max(map))`` per token, the worst token of the word counting.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["ae_kernel", "token_maps", "attention_loss", "binarise_at_mean", "maps_at"]


def ae_kernel(size: int = 3, sigma: float = 0.5, device: torch.device | str = "cpu") -> torch.Tensor:
    """Attend-and-Excite's smoothing kernel ``[1, 1, k, k]`` (its 1-D factor is ``exp(−((x−μ)/(2σ))²)``)."""
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-((x / (2 * sigma)) ** 2))
    k = g[:, None] * g[None, :]
    return (k / k.sum())[None, None]


def maps_at(attention: Mapping[str, torch.Tensor], res: int) -> torch.Tensor:
    """The layers of ``res × res`` pixels averaged: ``[B, res², tokens]``."""
    chosen = [m for m in attention.values() if m.shape[1] == res * res]
    if not chosen:
        sizes = sorted({int(round(m.shape[1] ** 0.5)) for m in attention.values()})
        raise ValueError(f"no cross-attention layer at resolution {res} (this model has {sizes}): "
                         "set attention_res to one of them")
    return torch.stack(chosen).mean(0)


def token_maps(attention: Mapping[str, torch.Tensor], indices: torch.Tensor, res: int, *, smooth: bool = True,
               sigma: float = 0.5, kernel_size: int = 3) -> torch.Tensor:
    """``[B, K, res, res]``: the (smoothed) map of each of the K anomaly tokens per sample.

    ``indices`` ``[B, K]`` are positions in the tokenised prompt (BOS = 0).
    """
    a = maps_at(attention, res)
    text = (a[:, :, 1:-1] * 100).softmax(dim=-1)  # [B, N, L-2]
    cols = text.gather(2, (indices.to(text.device) - 1)[:, None, :].expand(-1, text.shape[1], -1))  # [B, N, K]
    b, n, k = cols.shape
    maps = cols.permute(0, 2, 1).reshape(b * k, 1, res, res)
    if smooth:
        pad = kernel_size // 2
        maps = F.conv2d(F.pad(maps, (pad,) * 4, mode="reflect"), ae_kernel(kernel_size, sigma, maps.device))
    return maps.view(b, k, res, res)


def attention_loss(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss [B], peak [B, K])``: ``max_k max(0, 1 − peak_k)`` per sample, and each token's peak attention."""
    peak = maps.flatten(2).amax(-1)
    return (1.0 - peak).clamp_min(0.0).amax(-1), peak


def binarise_at_mean(maps: torch.Tensor) -> torch.Tensor:
    """The official rule: normalise the map by its max, then 1 where it is ≥ its mean (per sample, last token)."""
    m = maps[:, -1]
    m = m / m.flatten(1).amax(-1).clamp_min(1e-12)[:, None, None]
    return (m >= m.flatten(1).mean(-1)[:, None, None]).float()
