"""CutOut as ASBench synthesises anomalies with it (``M-3LAB/ASBench``, ``*/CutOut.py`` and the loaders).

Per image (ASBench works at 256×256):
1. one hole length L ~ U{20, …, 50} pixels (Python's inclusive ``random.randint(20, 50)``,
   drawn once per image and shared by its holes; ASBench uses one hole);
2. per hole a centre (y, x) uniform over *all* pixels (``np.random.randint(H)``, then W),
   so a hole near the border is truncated;
3. the hole is the box ``[y − L//2, y + L//2) × [x − L//2, x + L//2)`` clipped to the image
   (its side is the even number 2·(L//2), not L), filled with 0 (black on the 8-bit image);
4. the mask is the hole itself (1 inside), whatever the pixels were before.

Holes are drawn in pixels at 256²; at other sizes the half-side is rescaled per axis
(``scale_with_image``), which is what resizing to 256² and back does to a hole.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from pydantic import Field, model_validator

from anoplug.generator import Generator, Paper, Samples
from anoplug.params import Params
from anoplug.types import GOOD, Batch

REFERENCE_SIDE = 256  # ASBench's Cutout resizes every image to 256×256 before cutting (CutOut.py:22)
LABEL = "cutout"


class CutOutParams(Params):
    n_holes: int = Field(1, ge=1, le=16, description="holes per image (ASBench: 1)")
    length_min: int = Field(20, ge=1, le=256, description="hole length L ~ U{min..max} in pixels at 256² (inclusive)")
    length_max: int = Field(50, ge=1, le=256, description="largest hole length in pixels at 256² (inclusive)")
    fill: float = Field(0.0, ge=0.0, le=1.0, description="value written into the hole (ASBench: 0 = black)")
    scale_with_image: bool = Field(True, description="rescale 256² pixel sizes per axis to the image (False: absolute pixels)")

    @model_validator(mode="after")
    def _lengths_ordered(self) -> CutOutParams:
        if self.length_min > self.length_max:
            raise ValueError(f"length_min ({self.length_min}) must be <= length_max ({self.length_max})")
        return self


def _randint(rng: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi) from ``rng``."""
    return int(torch.randint(lo, hi, (1,), generator=rng))


def hole_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Union of axis-aligned boxes ``[B,K,4]`` (y0, y1, x0, x1; half-open) as a bool ``[B,1,H,W]`` mask."""
    h, w = size
    rows = torch.arange(h, device=boxes.device)
    cols = torch.arange(w, device=boxes.device)
    in_r = (rows >= boxes[..., 0, None]) & (rows < boxes[..., 1, None])  # [B,K,H]
    in_c = (cols >= boxes[..., 2, None]) & (cols < boxes[..., 3, None])  # [B,K,W]
    return (in_r[..., :, None] & in_c[..., None, :]).any(1, keepdim=True)


class CutOut(Generator):
    """ASBench's CutOut anomaly: a black square hole at a uniform position, the hole as mask."""

    name = "cutout"
    title = "CutOut: a black square hole (ASBench)"
    category = "cutpaste"
    tags = ("asbench", "mask", "baseline")
    paper = Paper("Improved Regularization of Convolutional Neural Networks with Cutout", venue="arXiv", year=2017,
                  url="https://arxiv.org/abs/1708.04552", code_url="https://github.com/uoguelph-mlrg/Cutout")
    Params = CutOutParams
    preserves_outside_mask = True

    def _half_sides(self, length: int, size: tuple[int, int]) -> tuple[int, int]:
        half = length // 2
        if not self.params.scale_with_image:
            return half, half
        h, w = size
        return max(1, round(half * h / REFERENCE_SIDE)), max(1, round(half * w / REFERENCE_SIDE))

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        p = self.params
        h, w = batch.size
        out = Samples()
        for rng in rngs:
            length = _randint(rng, p.length_min, p.length_max + 1)
            hy, hx = self._half_sides(length, (h, w))
            centres, boxes = [], []
            for _ in range(p.n_holes):
                y, x = _randint(rng, 0, h), _randint(rng, 0, w)  # every pixel, as np.random.randint(height)
                centres.append([y, x])
                boxes.append([max(y - hy, 0), min(y + hy, h), max(x - hx, 0), min(x + hx, w)])
            out.append({"length": length, "half": [hy, hx], "centres": centres, "boxes": boxes})
        return out

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        dev = batch.image.device
        k = max(len(s["boxes"]) for s in samples)
        pad = [0, 0, 0, 0]  # an empty box pads samples with fewer holes (replayed records may differ in count)
        boxes = torch.tensor([s["boxes"] + [pad] * (k - len(s["boxes"])) for s in samples], dtype=torch.long, device=dev)
        hole = hole_masks(boxes, batch.size)
        out = copy.copy(batch)  # shallow: keeps object_mask/depth/text, no re-validation of the input
        out.image = batch.image.masked_fill(hole, self.params.fill)  # pixels outside the hole stay bit-identical
        out.mask = hole.float()
        out.label = [LABEL if a else GOOD for a in hole.flatten(1).any(1).tolist()]
        out.meta = [dict(m) for m in batch.meta]
        out.extras = dict(batch.extras)
        return out
