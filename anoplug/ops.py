"""Small operations several methods share (one copy each, not one per plugin), and :func:`as_batch`,
the one way every entry point (``fit``, detectors, explorers) turns its input into a :class:`Batch`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anoplug.types import GOOD, Batch

__all__ = ["gaussian_blur", "as_batch", "hsv_adjust", "predict_in_chunks", "anomalous_subset", "write_anomalies"]


def anomalous_subset(batch: Batch, samples: Sequence[dict], key: str = "anomalous") -> tuple[Batch, list[int]]:
    """(output batch, indices of the samples drawn anomalous) for a generator that changes only those.

    The output is a clone when some samples stay normal (they leave as they came) and a shallow copy
    with fresh label/meta/extras containers when every sample changes (its tensors are replaced
    whole by :func:`write_anomalies`, so nothing is copied for nothing)."""
    idx = [i for i, s in enumerate(samples) if s[key]]
    if len(idx) < len(batch):
        return batch.clone(), idx
    import copy

    out = copy.copy(batch)
    out.label, out.meta, out.extras = list(batch.label), [dict(m) for m in batch.meta], dict(batch.extras)
    return out, idx


def write_anomalies(out: Batch, idx: Sequence[int], image: torch.Tensor, mask: torch.Tensor, label: str) -> Batch:
    """Put the changed ``image``/``mask`` of samples ``idx`` into ``out``; a sample whose mask came out
    empty is labelled good (a drawn anomaly that changed nothing is not a defect)."""
    if len(idx) == len(out):
        out.image, out.mask = image.contiguous(), mask
    else:
        out.image[list(idx)], out.mask[list(idx)] = image, mask
    nonempty = mask.flatten(1).any(1).tolist()
    for j, i in enumerate(idx):
        out.label[i] = label if nonempty[j] else GOOD
    return out


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


def as_batch(data: Any, what: str = "images", *, n: int | None = None, size: int | None = None,
             default: Any = None) -> Batch:
    """Turn what a user has at hand into a :class:`Batch`; ``what`` names the argument in the error.

    Accepted: a ``Batch`` (as is); an anoplug ``Dataset`` or a ``"toy:fabric"``-style source
    string (train split at ``size``; its first ``n`` samples, all when ``n`` is None); an image
    path or a list of paths; a uint8 HWC array or a list of them; a list of PIL images; a
    ``[3,H,W]`` or ``[B,3,H,W]`` float tensor in [0, 1]. ``None`` means ``default`` (e.g.
    ``"toy:fabric"``) when one is given.
    """
    if data is None and default is not None:
        data = default
    if isinstance(data, Batch):
        return data
    if isinstance(data, str) and ":" in data and not Path(data).exists():
        from anoplug.data import open_dataset

        data = open_dataset(data, split="train", **({"size": size} if size else {}))
    if hasattr(data, "batch") and hasattr(data, "__len__"):  # an anoplug Dataset
        return data.batch(range(len(data) if n is None else min(n, len(data))))
    if isinstance(data, torch.Tensor):
        return Batch(image=(data[None] if data.ndim == 3 else data).float())
    if isinstance(data, np.ndarray):
        return Batch.from_numpy(data)
    if isinstance(data, (str, Path)):
        return Batch.from_paths([data])
    if isinstance(data, Sequence) and not isinstance(data, str) and data:
        first = data[0]
        if isinstance(first, (str, Path)):
            return Batch.from_paths(list(data))
        if isinstance(first, np.ndarray):
            return Batch.from_numpy(list(data))
        if hasattr(first, "convert"):  # PIL images
            return Batch.from_pil(list(data))
    raise TypeError(f"{what}: cannot make an anoplug.Batch from {type(data).__name__}; pass a Batch, a dataset, "
                    "'toy:CATEGORY', image paths, uint8 arrays, PIL images or a [B,3,H,W] tensor")


@torch.no_grad()
def predict_in_chunks(images: Any, patch_fn: Any, chunk: int = 16, sigma: float = 4.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a detector over images in chunks: (anomaly maps ``[B,1,H,W]``, image scores ``[B]``), on CPU.

    ``patch_fn(part)`` returns the patch-level map ``[b,1,h,w]`` and the image scores ``[b]``; the
    map is upsampled to the input size and smoothed with a Gaussian (σ = 4, as SuperSimpleNet and
    PBAS do).
    """
    x = images if isinstance(images, torch.Tensor) else as_batch(images, "images").image
    maps, scores = [], []
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk]
        amap, score = patch_fn(part)
        amap = F.interpolate(amap, size=part.shape[-2:], mode="bilinear", align_corners=False)
        maps.append(gaussian_blur(amap, sigma).cpu())
        scores.append(score.cpu())
    return torch.cat(maps), torch.cat(scores)


def _wrap6(h: torch.Tensor) -> torch.Tensor:
    """``h mod 6`` in place (``torch.remainder`` measured 5x slower on CPU)."""
    return h.sub_(torch.floor(h / 6).mul_(6))


def hsv_adjust(x: torch.Tensor, hue_shift: torch.Tensor | float, saturation_shift: torch.Tensor | float | None = None,
               *, dim: int = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate the HSV hue of RGB ``x`` by ``hue_shift`` turns and add ``saturation_shift`` to its saturation.

    ``x`` is float RGB along ``dim`` on any scale (0–1 or 0–255); the shifts broadcast against one
    channel (``x`` with ``dim`` of size 1); saturation is clamped to [0, 1]. The round trip of
    torchvision's ``adjust_hue`` and of imgaug's hue/saturation (hue from the largest channel,
    red, then green, then blue on ties), written for few passes over the pixels, in float only
    (``where``, ``argmax`` over channels and mixed bool arithmetic are many times slower on CPU):
    the new chroma is ``clamp(max − min + Δs·max, 0, max)``, so V is never divided by. ``out``
    (which may be ``x``) receives the result and serves as scratch once ``x`` has been read.
    """
    r, g, b = (x.narrow(dim, c, 1) for c in range(3))
    mx = torch.maximum(torch.maximum(r, g), b)
    d = torch.minimum(torch.minimum(r, g), b)
    torch.sub(mx, d, out=d)  # chroma
    r_max = torch.eq(mx, r)
    g_max = torch.eq(mx, g).logical_and_(~r_max)
    b_max = ~(r_max | g_max)
    # grey pixels (d = 0) have all three differences 0, so their hue is 0 whatever the divisor
    h = (g - b).mul_(r_max)
    h.addcmul_(b - r, g_max).addcmul_(r - g, b_max).div_(d.masked_fill(d == 0, 1))  # in [-1, 1]
    h.add_(g_max, alpha=2).add_(b_max, alpha=4).add_(hue_shift * 6.0)
    _wrap6(h)  # hue in sextants, [0, 6)
    chroma = d
    if saturation_shift is not None:
        ds = torch.as_tensor(saturation_shift, dtype=x.dtype, device=x.device)
        chroma = torch.minimum(d.addcmul_(mx, ds).clamp_min_(0), mx)
    shape = [1] * x.ndim
    shape[dim] = 3
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).reshape(shape)
    k = _wrap6(torch.add(h, offsets, out=out))  # x is not read from here on, so out may be x
    torch.minimum(k, 4.0 - k, out=k).clamp_(0, 1)
    return torch.sub(mx, k.mul_(chroma), out=k)
