"""CutPaste (Li, Sohn, Yoon, Pfister — CVPR 2021), as three generators.

CutPaste-normal, per image:
1. area fraction a ~ U(0.02, 0.15) of the image, aspect ratio r log-uniform in [0.3, 1/0.3];
   patch width = round(sqrt(a·A·r)), height = round(sqrt(a·A/r));
2. cut the patch at a uniform position, colour-jitter it (brightness, contrast, saturation,
   hue 0.1 each, in a random order);
3. paste it (hard replace) at an independent uniform position, fully inside the image.

CutPaste-scar: a thin strip, width U(2, 16) and length U(10, 25) pixels at 256² (scaled by
sqrt(H·W)/256 for other sizes), jittered, rotated by U(-45°, 45°) with nearest-neighbour
lookup, pasted at a uniform position. CutPaste-3way labels each sample normal, cutpaste or
scar with equal chance (the 3-class proxy task of the paper).

The paper returns only the class; we also return the pixel mask: the paste *footprint* at
the destination (after rotation for scar), never the source box. ``mask_mode="effective"``
keeps only footprint pixels whose channel-mean change exceeds 1 grey level (NSA's rule).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from anoplug.generator import Generator, Paper, Samples
from anoplug.params import Params
from anoplug.types import GOOD, Batch
from anoplug_cutpaste.paste import Patches, paste, rotated_box

PAPER = Paper("CutPaste: Self-Supervised Learning for Anomaly Detection and Localization", venue="CVPR", year=2021,
              url="https://arxiv.org/abs/2104.04015", code_url="")
REFERENCE_SIDE = 256  # scar sizes are given in pixels at 256×256
EFFECTIVE_TOL = 1.0  # grey levels (of 255) for mask_mode="effective"
OBJECT_TRIES = 64  # candidate positions tried for object-aware placement
KINDS = (GOOD, "cutpaste", "scar")


# -- parameters ------------------------------------------------------------------------------
class _Common(Params):
    jitter: float = Field(0.1, ge=0.0, le=0.5,
                          description="colour jitter of the patch: brightness/contrast/saturation ×U(1±j), hue ±j")
    mask_mode: Literal["geometric", "effective"] = Field(
        "geometric", description="mask = paste footprint, or footprint ∧ change > 1 grey level")
    object_aware: bool = Field(False, description="keep patch centres on the object_mask when one is given (not in the paper)")


class _NormalFields(Params):
    area_min: float = Field(0.02, gt=0.0, le=1.0, description="smallest patch area as a fraction of the image")
    area_max: float = Field(0.15, gt=0.0, le=1.0, description="largest patch area as a fraction of the image")
    aspect_ratio: float = Field(0.3, ge=0.05, le=1.0, description="aspect ratio log-uniform in [a, 1/a]")

    @model_validator(mode="after")
    def _area_ordered(self) -> _NormalFields:
        if self.area_min >= self.area_max:
            raise ValueError(f"area_min ({self.area_min}) must be < area_max ({self.area_max})")
        return self


class _ScarFields(Params):
    width_min: float = Field(2.0, ge=0.5, le=256, description="scar width U(min, max) in pixels at 256²")
    width_max: float = Field(16.0, ge=0.5, le=256, description="scar width upper bound in pixels at 256²")
    length_min: float = Field(10.0, ge=0.5, le=256, description="scar length U(min, max) in pixels at 256²")
    length_max: float = Field(25.0, ge=0.5, le=256, description="scar length upper bound in pixels at 256²")
    rotation: float = Field(45.0, ge=0.0, le=180.0, description="scar rotated by U(-rotation, rotation) degrees")
    scale_with_image: bool = Field(True, description="scale scar pixel sizes by sqrt(H·W)/256 (False: absolute pixels)")

    @model_validator(mode="after")
    def _sizes_ordered(self) -> _ScarFields:
        if self.width_min > self.width_max:
            raise ValueError(f"width_min ({self.width_min}) must be <= width_max ({self.width_max})")
        if self.length_min > self.length_max:
            raise ValueError(f"length_min ({self.length_min}) must be <= length_max ({self.length_max})")
        return self


class CutPasteParams(_NormalFields, _Common):
    pass


class ScarParams(_ScarFields, _Common):
    pass


class ThreeWayParams(_NormalFields, _ScarFields, _Common):
    pass


# -- sampling ----------------------------------------------------------------------------------
def _uniform(rng: torch.Generator, n: int) -> list[float]:
    return torch.rand(n, generator=rng, dtype=torch.float64).tolist()


def _jitter(u: list[float], j: float) -> dict:
    """Jitter factors and a uniformly random order of the four operations from 8 uniforms."""
    lo = max(0.0, 1 - j)
    factors = [lo + (1 + j - lo) * x for x in u[:3]] + [j * (2 * u[3] - 1)]
    order = sorted(range(4), key=lambda k: u[4 + k])  # the ranks of 4 uniforms: a uniform permutation
    return {"jitter": factors, "order": order}


def _position(u: tuple[float, float], rng: torch.Generator, box: tuple[int, int], size: tuple[int, int],
              obj: torch.Tensor | None) -> list[int]:
    """Top-left corner of a ``box`` placed uniformly inside ``size`` (from two uniforms ``u``).

    With an object mask, the first of ``OBJECT_TRIES`` uniform candidates whose centre lies
    on the object wins (a fixed number of extra draws, so seeding stays per-sample); if none
    does, the plain uniform position is kept.
    """
    (bh, bw), (H, W) = box, size
    ny, nx = max(H - bh + 1, 1), max(W - bw + 1, 1)
    if obj is not None:
        c = torch.rand(OBJECT_TRIES, 2, generator=rng, dtype=torch.float64)
        ys, xs = (c[:, 0] * ny).long(), (c[:, 1] * nx).long()
        on = obj[(ys + bh // 2).clamp(max=H - 1), (xs + bw // 2).clamp(max=W - 1)] > 0
        if bool(on.any()):
            k = int(on.nonzero()[0])
            return [int(ys[k]), int(xs[k])]
    return [int(u[0] * ny), int(u[1] * nx)]


def sample_normal(rng: torch.Generator, size: tuple[int, int], p: Any, obj: torch.Tensor | None = None) -> dict:
    """Draw one CutPaste-normal patch (area, aspect, source, destination, jitter)."""
    H, W = size
    u = _uniform(rng, 14)
    area = p.area_min + (p.area_max - p.area_min) * u[0]
    lo, hi = math.log(p.aspect_ratio), math.log(1 / p.aspect_ratio)
    aspect = math.exp(lo + (hi - lo) * u[1])  # width / height
    w = min(max(round(math.sqrt(area * H * W * aspect)), 1), W)
    h = min(max(round(math.sqrt(area * H * W / aspect)), 1), H)
    return {"kind": "cutpaste", "area_draw": area, "aspect_draw": aspect, "h": h, "w": w, "angle": 0.0,
            "box": [h, w], "area_ratio": h * w / (H * W), "src": _position((u[2], u[3]), rng, (h, w), size, obj),
            "dst": _position((u[4], u[5]), rng, (h, w), size, obj), **_jitter(u[6:], p.jitter)}


def sample_scar(rng: torch.Generator, size: tuple[int, int], p: Any, obj: torch.Tensor | None = None) -> dict:
    """Draw one CutPaste-scar strip (width, length, angle, source, destination, jitter)."""
    H, W = size
    scale = math.sqrt(H * W) / REFERENCE_SIDE if p.scale_with_image else 1.0
    u = _uniform(rng, 15)
    width = p.width_min + (p.width_max - p.width_min) * u[0]
    length = p.length_min + (p.length_max - p.length_min) * u[1]
    angle = p.rotation * (2 * u[2] - 1)
    w = min(max(round(width * scale), 1), W)
    h = min(max(round(length * scale), 1), H)
    bh, bw = rotated_box(h, w, angle)
    bh, bw = min(bh, H), min(bw, W)
    return {"kind": "scar", "width_draw": width, "length_draw": length, "h": h, "w": w, "angle": angle,
            "box": [bh, bw], "src": _position((u[3], u[4]), rng, (h, w), size, obj),
            "dst": _position((u[5], u[6]), rng, (bh, bw), size, obj), **_jitter(u[7:], p.jitter)}


# -- the generators ----------------------------------------------------------------------------
class _CutPasteBase(Generator):
    category = "cutpaste"
    tags = ("self-supervised", "mask")
    paper = PAPER
    preserves_outside_mask = True
    version = "0.1.0"

    def _object(self, batch: Batch, i: int) -> torch.Tensor | None:
        if not self.params.object_aware or batch.object_mask is None:
            return None
        return batch.object_mask[i, 0]

    def _draw(self, rng: torch.Generator, size: tuple[int, int], obj: torch.Tensor | None) -> dict:
        raise NotImplementedError

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        return Samples(self._draw(rng, batch.size, self._object(batch, i)) for i, rng in enumerate(rngs))

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        dev = batch.image.device

        geometry = torch.tensor([[s["kind"] != GOOD, *s["src"], s["h"], s["w"], *s["dst"], *s["box"]] for s in samples],
                                dtype=torch.long, device=dev)
        patches = Patches(
            active=geometry[:, 0].bool(), src_y=geometry[:, 1], src_x=geometry[:, 2], h=geometry[:, 3], w=geometry[:, 4],
            angle=torch.tensor([s["angle"] for s in samples], dtype=torch.float64, device=dev),
            dst_y=geometry[:, 5], dst_x=geometry[:, 6], box_h=geometry[:, 7], box_w=geometry[:, 8],
            jitter=torch.tensor([s["jitter"] for s in samples], dtype=torch.float64, device=dev),
            order=torch.tensor([s["order"] for s in samples], dtype=torch.long, device=dev))
        tol = EFFECTIVE_TOL if self.params.mask_mode == "effective" else None
        image, mask = paste(batch.image, patches, effective_tol=tol)
        anomalous = mask.flatten(1).amax(1) > 0
        out = copy.copy(batch)  # shallow: keeps object_mask/depth/text, no re-validation of the input
        out.image, out.mask = image, mask
        out.label = [s["kind"] if bool(a) else GOOD for s, a in zip(samples, anomalous.tolist())]
        out.meta = [dict(m) for m in batch.meta]
        out.extras = dict(batch.extras)
        return out


class CutPaste(_CutPasteBase):
    """CutPaste-normal: a jittered rectangle cut and pasted elsewhere in the same image."""

    name = "cutpaste"
    title = "CutPaste: a jittered rectangle pasted elsewhere"
    Params = CutPasteParams

    def _draw(self, rng: torch.Generator, size: tuple[int, int], obj: torch.Tensor | None) -> dict:
        return sample_normal(rng, size, self.params, obj)


class CutPasteScar(_CutPasteBase):
    """CutPaste-scar: a thin, rotated strip cut and pasted elsewhere in the same image."""

    name = "cutpaste-scar"
    title = "CutPaste-scar: a thin rotated strip"
    Params = ScarParams

    def _draw(self, rng: torch.Generator, size: tuple[int, int], obj: torch.Tensor | None) -> dict:
        return sample_scar(rng, size, self.params, obj)


class CutPaste3Way(_CutPasteBase):
    """CutPaste 3-way: each sample is normal, CutPaste or scar with probability 1/3."""

    name = "cutpaste-3way"
    title = "CutPaste 3-way: normal / cutpaste / scar"
    Params = ThreeWayParams
    classes: ClassVar[tuple[str, ...]] = KINDS  # class index = KINDS.index(label)

    def _draw(self, rng: torch.Generator, size: tuple[int, int], obj: torch.Tensor | None) -> dict:
        kind = KINDS[min(int(_uniform(rng, 1)[0] * 3), 2)]
        normal = sample_normal(rng, size, self.params, obj)  # both drawn: a fixed number of draws per sample
        scar = sample_scar(rng, size, self.params, obj)
        chosen = dict(scar if kind == "scar" else normal)
        chosen["kind"] = kind
        chosen["class_index"] = KINDS.index(kind)
        return chosen
