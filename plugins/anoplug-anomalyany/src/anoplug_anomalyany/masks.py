"""The anomaly mask AnomalyAny does not produce (a library extension): token attention ∧ visible change.

The original outputs an image only. Here each sample also gets a binary mask, the conjunction of

1. **where the anomaly word attended**: the token's map (:mod:`.attention_maps`, res 16, from the
   conditional half of every denoising step's guided pass) averaged over the steps, normalised by
   its maximum and binarised at its mean (the official code's own binarisation, which it uses to
   count n), or at ``attention_threshold`` × max when that is set; nearest-upsampled to the image;
2. **where the image visibly changed**: the largest per-channel ``|output − input|`` above
   ``change_threshold`` (on [0, 1]);
3. the region the change was confined to (the target or object mask), when there is one.

A sample whose mask is empty is labelled ``good``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["attention_region", "visible_change", "anomaly_mask", "mask_precision"]


def attention_region(token_maps: Sequence[torch.Tensor], size: tuple[int, int], threshold: float = 0.0) -> torch.Tensor:
    """``[B, 1, H, W]`` in {0, 1} from per-step token maps ``[B, K, r, r]`` (the word's tokens merged by max)."""
    m = torch.stack(list(token_maps)).mean(0).amax(1)  # [B, r, r]
    m = m / m.flatten(1).amax(-1).clamp_min(1e-12)[:, None, None]
    cut = m.flatten(1).mean(-1) if threshold <= 0 else torch.full((len(m),), float(threshold), device=m.device)
    binary = (m >= cut[:, None, None]).float()[:, None]
    return F.interpolate(binary, size=size, mode="nearest")


def visible_change(out: torch.Tensor, src: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[B, 1, H, W]``: 1 where some channel moved by more than ``threshold``."""
    return ((out - src).abs().amax(1, keepdim=True) > threshold).float()


def anomaly_mask(attention: torch.Tensor, change: torch.Tensor, confine: torch.Tensor | None = None) -> torch.Tensor:
    m = attention * change
    return m * confine if confine is not None else m


def mask_precision(mask: torch.Tensor, change: torch.Tensor, attention: torch.Tensor) -> dict[str, float]:
    """How well the mask accounts for what changed (all pixels of the batch pooled).

    - ``change_outside_mask``: share of the changed pixels that the mask leaves out (leakage);
    - ``attention_precision``: share of the binarised attention region that visibly changed;
    - ``iou_with_change``: IoU of the mask with the visible change;
    - ``mask_area``: mean share of the image the mask covers.
    """
    changed = float(change.sum())
    inter = float((mask * change).sum())
    union = float(((mask + change) > 0).float().sum())
    return {"change_outside_mask": (changed - inter) / changed if changed else 0.0,
            "attention_precision": float((attention * change).sum()) / max(float(attention.sum()), 1.0),
            "iou_with_change": inter / union if union else 0.0, "mask_area": float(mask.mean())}
