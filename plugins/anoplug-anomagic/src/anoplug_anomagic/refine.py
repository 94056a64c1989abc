"""Contrastive mask refinement and the acceptance rule (paper step 6), with a documented stand-in for MetaUAS.

The official code feeds the generated image and its normal source to **MetaUAS-256**, a
one-prompt change-segmentation network (EfficientNet-B4 + UNet decoder), thresholds its sigmoid
map at 0.5, ANDs it with the input mask, and accepts the sample when

    quality = 1 − (fraction of flagged pixels)  ≥ 0.7   and   coverage = |flagged ∧ input mask| / |image| ≥ 0.001,

retrying with a new seed up to 100 times. MetaUAS's weights are not available offline, so the
*change map* here is our assumption: a backbone-feature difference between generated and
source. With ``backbone="vgg16"`` (the toolkit's VGG16, when its weights are in the cache)
the map is the LPIPS-style distance of unit-normalised ``relu1_2`` and ``relu2_2`` features,
averaged and upsampled; with ``"pixel"`` it is the mean absolute RGB difference smoothed by a
3×3 box. A pixel is flagged where the map exceeds ``threshold``; that plays the role of
MetaUAS's sigmoid > 0.5. The rest (AND with the input mask, quality, coverage, retries) is the
official rule. The map compares the generated image with the *VAE reconstruction* of the source
(our assumption): the tiny VAE blurs every pixel, which MetaUAS, trained to ignore nuisance
changes, would not flag; against the reconstruction only what the diffusion changed remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

#: calibrated on the shipped model (README): the in-mask change of a generated defect vs the decoder blur
THRESHOLDS = {"vgg16": 0.25, "pixel": 0.03}

__all__ = ["THRESHOLDS", "change_map", "Refined", "refine", "accepted", "backbone_available"]


def backbone_available(name: str) -> bool:
    if name == "pixel":
        return True
    from anoplug.zoo.vgg import lpips_vgg16_path

    return lpips_vgg16_path().is_file()


@lru_cache(maxsize=1)
def _vgg() -> Any:
    from anoplug.zoo.vgg import VGGFeatures

    return VGGFeatures("relu2_2").eval()


def change_map(generated: torch.Tensor, source: torch.Tensor, backbone: str = "vgg16") -> torch.Tensor:
    """``[B, 1, H, W]`` ≥ 0: how much each location of ``generated`` differs from ``source`` (both [0, 1])."""
    if backbone == "pixel":
        d = (generated - source).abs().mean(1, keepdim=True)
        return F.avg_pool2d(d, 3, stride=1, padding=1, count_include_pad=False)
    if backbone != "vgg16":
        raise ValueError(f"unknown contrast backbone {backbone!r}; use 'vgg16' or 'pixel'")
    vgg = _vgg().to(generated.device)
    with torch.no_grad():
        fa = vgg(generated, ["relu1_2", "relu2_2"])
        fb = vgg(source, ["relu1_2", "relu2_2"])
    maps = []
    for k in ("relu1_2", "relu2_2"):
        a, b = F.normalize(fa[k], dim=1), F.normalize(fb[k], dim=1)
        d = (a - b).pow(2).sum(1, keepdim=True)
        maps.append(F.interpolate(d, size=generated.shape[-2:], mode="bilinear", align_corners=False))
    return torch.stack(maps).mean(0)


@dataclass
class Refined:
    """The refined masks and the two numbers of the acceptance rule, per sample."""

    mask: torch.Tensor  # [B, 1, H, W] flagged ∧ input mask
    flagged: torch.Tensor  # [B, 1, H, W] flagged anywhere
    quality: torch.Tensor  # [B]
    coverage: torch.Tensor  # [B]


def refine(generated: torch.Tensor, source: torch.Tensor, input_mask: torch.Tensor, *, threshold: float,
           backbone: str = "vgg16") -> Refined:
    """Flag changed pixels, AND with the input mask, and measure quality and coverage (official definitions)."""
    flagged = (change_map(generated, source, backbone) > threshold).float()
    mask = flagged * (input_mask > 0.5).float()
    return Refined(mask=mask, flagged=flagged, quality=1.0 - flagged.flatten(1).mean(1),
                   coverage=mask.flatten(1).mean(1))


def accepted(r: Refined, min_quality: float = 0.7, min_coverage: float = 0.001) -> torch.Tensor:
    """``[B]`` bool: the official acceptance rule."""
    return (r.quality >= min_quality) & (r.coverage >= min_coverage)
