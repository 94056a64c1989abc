"""NSA's pixel targets: where the blended image actually changed, and the soft logistic label.

Binary: union of patch masks ∧ (channel-mean |before − after| > tol grey levels), then a
5×5 median filter (OpenCV ``medianBlur``, replicated border). On a binary image the median
is a majority vote, i.e. a box count ≥ 13.
Soft (NSA's "logistic-intensity"): L = the mean absolute change inside the binary label,
median-filtered with a disk of radius 5 (scikit-image / SciPy, nearest border), then
label / (1 + exp(−k (L − x0))). The soft label is 0 wherever the binary label is, so the
median is only needed there: we gather the 81-pixel disk neighbourhoods of those pixels only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_DISK_CACHE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def binary_median(mask: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Median filter of a {0,1} ``[B,1,H,W]`` mask with a ``size``×``size`` square (replicate border)."""
    r = size // 2
    H, W = mask.shape[-2:]
    rows_idx = torch.arange(-r, H + r, device=mask.device).clamp_(0, H - 1)  # replicated border
    cols_idx = torch.arange(-r, W + r, device=mask.device).clamp_(0, W - 1)
    padded = mask.to(torch.uint8).index_select(-2, rows_idx).index_select(-1, cols_idx)
    rows = padded[..., 0:H, :].clone()  # separable box count by shifted sums, in bytes (counts <= 49)
    for k in range(1, size):
        rows += padded[..., k:k + H, :]
    count = rows[..., 0:W].clone()
    for k in range(1, size):
        count += rows[..., k:k + W]
    return (count > (size * size) // 2).to(mask.dtype)


def disk_offsets(radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offsets of scikit-image's ``disk(radius)`` footprint."""
    if radius not in _DISK_CACHE:
        d = torch.arange(-radius, radius + 1)
        yy, xx = torch.meshgrid(d, d, indexing="ij")
        inside = (yy**2 + xx**2) <= radius**2
        _DISK_CACHE[radius] = (yy[inside], xx[inside])
    return _DISK_CACHE[radius]


def disk_median_at(values: torch.Tensor, where: torch.Tensor, radius: int = 5, levels: int = 3,
                   chunk: int = 4096) -> torch.Tensor:
    """Median of ``values`` ``[B,1,H,W]`` over a disk, evaluated only at the True pixels of ``where``.

    ``values`` must be multiples of ``1/levels`` in [0, 255] (a mean of 3 grey-level
    differences is), so they are handled exactly as small integers: on CPU the selection
    runs in NumPy's introselect, which is an order of magnitude faster than torch's
    ``kthvalue`` here.
    """
    out = torch.zeros_like(values)
    b, _, y, x = where.nonzero(as_tuple=True)
    if b.numel() == 0:
        return out
    dy, dx = disk_offsets(radius)
    q = (values[:, 0] * levels).round().to(torch.int16)
    padded = F.pad(q[:, None].float(), (radius, radius, radius, radius), mode="replicate")[:, 0].to(torch.int16)
    H, W = padded.shape[-2:]
    flat = padded.reshape(-1)
    base = b * (H * W) + (y + radius) * W + (x + radius)
    offsets = (dy * W + dx).to(base.device)
    mid = offsets.numel() // 2
    med = torch.empty(base.numel(), dtype=torch.int16, device=values.device)
    for start in range(0, base.numel(), chunk):  # cache-sized blocks: [chunk, 81] neighbourhoods, one row per pixel
        idx = (base[start:start + chunk, None] + offsets[None, :]).reshape(-1)
        neigh = flat.index_select(0, idx).view(-1, offsets.numel())
        if neigh.device.type == "cpu":
            import numpy as np

            med[start:start + chunk] = torch.from_numpy(np.partition(neigh.numpy(), mid, axis=1)[:, mid])
        else:
            med[start:start + chunk] = neigh.kthvalue(mid + 1, dim=1).values
    out[b, 0, y, x] = med.to(values.dtype) / levels
    return out


def nsa_labels(change: torch.Tensor, union: torch.Tensor, tol: float,
               logistic: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(binary label, soft label or None) from the change map and the union of patch masks.

    ``change`` ``[B,1,H,W]`` is the channel-mean |before − after| in grey levels;
    ``logistic`` ``[B,2]`` holds (k, x0) per sample.
    """
    label = binary_median((union * change > tol).to(change.dtype))
    if logistic is None:
        return label, None
    level = disk_median_at(label * change, label.bool())
    k, x0 = logistic[:, 0, None, None, None], logistic[:, 1, None, None, None]
    soft = label / (1 + torch.exp(-k * (level - x0)))
    return label, soft
