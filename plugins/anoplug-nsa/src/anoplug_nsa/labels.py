"""NSA's pixel targets: where the blended image actually changed, and the soft logistic label.

Binary: union of patch masks ∧ (channel-mean |before − after| > tol grey levels), then a
5×5 median filter (OpenCV ``medianBlur``, replicated border). On a binary image the median
is a majority vote, i.e. a box count ≥ 13.
Soft (NSA's "logistic-intensity"): L = the mean absolute change inside the binary label,
median-filtered with a disk of radius 5 (scikit-image / SciPy, nearest border), then
label / (1 + exp(−k (L − x0))). The median is only needed where the label is 1, so we
gather the 81-pixel disk neighbourhoods of those pixels only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_DISK_CACHE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def binary_median(mask: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Median filter of a {0,1} ``[B,1,H,W]`` mask with a ``size``×``size`` square (replicate border)."""
    r = size // 2
    count = F.avg_pool2d(F.pad(mask, (r, r, r, r), mode="replicate"), size, stride=1) * (size * size)
    return (count > (size * size) / 2).to(mask.dtype)


def disk_offsets(radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offsets of scikit-image's ``disk(radius)`` footprint."""
    if radius not in _DISK_CACHE:
        d = torch.arange(-radius, radius + 1)
        yy, xx = torch.meshgrid(d, d, indexing="ij")
        inside = (yy**2 + xx**2) <= radius**2
        _DISK_CACHE[radius] = (yy[inside], xx[inside])
    return _DISK_CACHE[radius]


def disk_median_at(values: torch.Tensor, where: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Median of ``values`` ``[B,1,H,W]`` over a disk, evaluated only at the True pixels of ``where``."""
    out = torch.zeros_like(values)
    b, _, y, x = where.nonzero(as_tuple=True)
    if b.numel() == 0:
        return out
    dy, dx = disk_offsets(radius)
    padded = F.pad(values, (radius, radius, radius, radius), mode="replicate")
    H, W = padded.shape[-2:]
    flat = padded.reshape(-1)
    base = b * (H * W) + (y + radius) * W + (x + radius)
    neigh = flat[base[:, None] + (dy * W + dx).to(base.device)[None, :]]  # [N, 81]
    k = (neigh.shape[1] + 1) // 2
    out[b, 0, y, x] = neigh.kthvalue(k, dim=1).values
    return out


def nsa_labels(before: torch.Tensor, after: torch.Tensor, union: torch.Tensor, tol: float,
               logistic: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(binary label, soft label or None) from images in grey levels (0..255) and the patch union.

    ``logistic`` ``[B,2]`` holds (k, x0) per sample.
    """
    change = (before - after).abs().mean(1, keepdim=True)
    label = binary_median((union * change > tol).to(before.dtype))
    if logistic is None:
        return label, None
    level = disk_median_at(label * change, label.bool())
    k, x0 = logistic[:, 0, None, None, None], logistic[:, 1, None, None, None]
    soft = label / (1 + torch.exp(-k * (level - x0)))
    return label, soft
