"""The image side of ComGEN: components of normal images, their layout density, and residual masks.

ComGEN binds one learned text embedding to each *component* of the normal images. Before
any embedding can be learned, the components have to be found, without labels (the method
is unsupervised). This module does that, and the two image-space steps after generation:

- :func:`instances` splits a foreground mask into connected parts (one per component
  instance); :func:`instance_features` describes each part by colour and shape, and
  :func:`kmeans` groups the parts of all normal images into component *types* (washer,
  red cap, ... on the toy tray) - the discovery is our assumption, the paper does not say;
- :func:`layout_density` is how often a component covers each pixel in the normal images,
  the density that *low-density sampling* draws new positions against;
- :func:`reference_residual` is the Reference Neighbour Association: the per-pixel distance of a
  generated image to its nearest normal references, at several scales (min over references,
  mean over scales); :func:`residual_mask` gates it with the changed component's attention
  map (Text-to-Component Residual Mapping) and thresholds it.

Everything is batched torch (connected components via :mod:`scipy.ndimage`, a real library).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["instances", "instance_features", "kmeans", "assign", "layout_density", "box_of", "dilate", "fill_holes", "shift_mask",
           "reference_residual", "nearest_references", "residual_mask", "FEATURES"]

#: what describes a component instance: mean colour (3), log area, fill of its box, elongation.
FEATURES = ("r", "g", "b", "log_area", "fill", "elongation")


def instances(mask: torch.Tensor, min_pixels: int = 4) -> list[torch.Tensor]:
    """The connected parts (8-connectivity) of a binary ``[H, W]`` mask with at least ``min_pixels``, as bool masks."""
    from scipy import ndimage

    lab, n = ndimage.label(mask.detach().cpu().numpy() > 0.5, structure=np.ones((3, 3), bool))
    out = [torch.from_numpy(lab == k) for k in range(1, n + 1)]
    return [m for m in out if int(m.sum()) >= min_pixels]


def instance_features(image: torch.Tensor, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[n, 6]`` features (:data:`FEATURES`) of the parts of one ``[3, H, W]`` image."""
    rows = []
    for m in parts:
        ys, xs = torch.nonzero(m, as_tuple=True)
        area = float(len(ys))
        colour = image[:, m].mean(1)
        box = float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        cov = torch.cov(torch.stack([ys.float(), xs.float()])) if len(ys) > 1 else torch.eye(2)
        ev = torch.linalg.eigvalsh(cov + 1e-3 * torch.eye(2))
        shape = torch.tensor([np.log(area), area / box, float((ev[1] / ev[0]).sqrt().log())], dtype=torch.float32)
        rows.append(torch.cat([colour.float(), shape]))
    return torch.stack(rows) if rows else torch.zeros(0, len(FEATURES))


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ on rows of ``x`` (standardised by the caller); returns (centroids ``[k, d]``, labels ``[n]``)."""
    n = len(x)
    k = max(1, min(k, n))
    first = int(torch.randint(0, n, (1,), generator=generator))
    cent = [x[first]]
    for _ in range(1, k):  # k-means++ seeding: next centre with probability ∝ squared distance
        d2 = torch.cdist(x, torch.stack(cent)).min(1).values.pow(2)
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        cent.append(x[int(torch.multinomial(p, 1, generator=generator))])
    c = torch.stack(cent)
    for _ in range(iterations):
        lab = torch.cdist(x, c).argmin(1)
        new = torch.stack([x[lab == j].mean(0) if bool((lab == j).any()) else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return c, torch.cdist(x, c).argmin(1)


def assign(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The component type of each instance: its nearest centroid in standardised feature space."""
    if len(features) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cdist((features - mean) / std, centroids).argmin(1)


def dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of ``[..., H, W]`` masks by a square of radius ``r`` (max-pool)."""
    if r <= 0:
        return m
    shape = m.shape
    x = m.reshape(-1, 1, *shape[-2:]).float()
    return F.max_pool2d(x, 2 * r + 1, stride=1, padding=r).reshape(shape)


def shift_mask(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``[H, W]`` mask translated by (dy, dx) pixels; what leaves the frame is lost (no wrap-around)."""
    h, w = m.shape[-2:]
    out = torch.zeros_like(m)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = m[..., ys, xs]
    return out


def box_of(m: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` float mask of the bounding box of the true pixels of ``m`` (empty for an empty mask)."""
    out = torch.zeros(m.shape, dtype=torch.float32)
    ys, xs = torch.nonzero(m, as_tuple=True)
    if len(ys):
        out[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1] = 1
    return out


def layout_density(object_masks: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """``[H, W]`` in [0, 1]: the share of normal images with a component over each pixel (lightly blurred)."""
    from anoplug.ops import gaussian_blur

    d = object_masks.float().mean(0, keepdim=True)  # [1, 1, H, W]
    return gaussian_blur(d, sigma)[0, 0].clamp(0, 1) if sigma > 0 else d[0, 0]


def nearest_references(image: torch.Tensor, memory: torch.Tensor, k: int, scale: int = 4) -> torch.Tensor:
    """Indices ``[B, k]`` of the ``k`` memory images nearest to each image (L2 at 1/``scale`` size): the association."""
    a = F.avg_pool2d(image, scale).flatten(1)
    b = F.avg_pool2d(memory.to(image), scale).flatten(1)
    return torch.cdist(a, b).topk(min(k, len(memory)), largest=False).indices


def fill_holes(image: torch.Tensor, hole: torch.Tensor, iterations: int = 64) -> torch.Tensor:
    """``[3, H, W]`` with the ``hole`` ``[H, W]`` filled from its border inwards (repeated 3×3 means of known pixels)."""
    h = (hole > 0.5)[None, None].float()
    known = 1.0 - h
    x = image[None] * known
    for _ in range(iterations):
        num = F.avg_pool2d(x * known, 3, stride=1, padding=1, count_include_pad=False)
        den = F.avg_pool2d(known, 3, stride=1, padding=1, count_include_pad=False)
        reach = (den > 0) & (h > 0) & (known < 0.5)
        x = torch.where(reach, num / den.clamp_min(1e-6), x)
        known = torch.where(reach, torch.ones_like(known), known)
        if bool((known > 0.5).all()):
            break
    return torch.where(h > 0, x, image[None])[0]


def reference_residual(image: torch.Tensor, references: torch.Tensor, scales: Sequence[int] = (1, 2, 4)) -> torch.Tensor:
    """``[B, 1, H, W]``: mean over ``scales`` of the channel-mean |image − reference|, minimum over the references.

    ``references`` is ``[B, K, 3, H, W]`` (aligned normal images). The minimum forgives what
    some normal image also has (a washer turned another way); what no reference has (an
    empty slot, a part on the rim) stays. Coarse scales see a displaced or missing part as a
    whole, the full scale keeps its outline.
    """
    b, k = references.shape[:2]
    h, w = image.shape[-2:]
    acc = torch.zeros(b, 1, h, w, device=image.device)
    for s in scales:
        g = F.avg_pool2d(image, s) if s > 1 else image
        r = F.avg_pool2d(references.flatten(0, 1), s) if s > 1 else references.flatten(0, 1)
        d = (g[:, None] - r.view(b, k, *r.shape[1:])).abs().mean(2).min(1).values[:, None]
        acc += F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False) if s > 1 else d
    return acc / len(scales)


def residual_mask(residual: torch.Tensor, attention: torch.Tensor, region: torch.Tensor, *, threshold: float,
                  attention_floor: float) -> torch.Tensor:
    """The anomaly mask: ``residual · (floor + (1 − floor) · attention) > threshold`` inside the edited region.

    ``attention`` ``[B,1,H,W]`` in [0, 1] is the changed components' token attention (1 where
    the text-to-component map is strongest); ``attention_floor`` = 1 ignores it.
    """
    gate = attention_floor + (1.0 - attention_floor) * attention.clamp(0, 1)
    return ((residual * gate > threshold) & (region > 0.5)).float()
