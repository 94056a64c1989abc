"""Foreign Patch Interpolation (Tan, Hou, Batten, Qiu, Kainz — MOOD 2020 / MELBA 2022), and ASBench's "FPI".

``variant="fpi"`` follows the authors' ``self_sup_task.patch_ex`` (``jemtan/FPI``), per image:
1. a second normal image S (``conditions.source_image``, else another image of the batch);
2. a square patch: half-width w ~ U{round(0.05·H), …, round(0.2·H) − 1} (from the first axis,
   used for both), centre per axis uniform in the core ``[int(0.1·n), int(0.9·n))``; the box
   ``[c − w, c + w)`` is clipped to the image;
3. α ~ U(0.05, 0.95); inside the patch ``(1 − α)·I + α·S`` — the *same* location of the
   foreign image, no shift and no resize; outside, I untouched;
4. the label is α where the patch lies and the two images differ (in any channel), 0 elsewhere:
   a soft label in ``extras["soft_mask"]``, its support as the binary mask.
(The official code calls its weight of the *own* image ``patch_interp``; our α is 1 − patch_interp,
the share of the foreign image and the label's value; both are U(0.05, 0.95).)

``variant="asbench"`` is what ASBench's ``FPI_generation.py`` actually does under the name FPI —
not a patch interpolation but the MOOD example's "sphere" outlier in 2-D: a disc of radius
r ~ U{round(0.05·H), …, round(0.1·H) − 1}, centre uniform in the middle half, whose 8-bit values
are shifted by ±U(0.2, 0.3)·(max − min of the image) and cast back to uint8 with NumPy's wrap-around;
the mask is the disc. It needs no second image.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from anoplug.conditions import ConditionError
from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import Params
from anoplug.types import GOOD, Batch

LABEL = "fpi"


class FPIParams(Params):
    variant: Literal["fpi", "asbench"] = Field("fpi", description=(
        "'fpi': the authors' foreign patch interpolation (soft label α); 'asbench': ASBench's FPI_generation.py "
        "(an intensity-shifted disc, binary mask)"))
    source: Literal["auto", "batch"] = Field("auto", description=(
        "foreign image (variant fpi): 'auto' = conditions.source_image if given, else another image of the batch; "
        "'batch' = another image of the batch"))
    core_percent: float = Field(0.8, gt=0.0, le=1.0, description="patch centres lie in the central share of each side")
    width_min: float = Field(0.05, gt=0.0, le=0.5, description="smallest patch half-width as a fraction of the height")
    width_max: float = Field(0.2, gt=0.0, le=0.5, description="half-width upper bound (exclusive), fraction of the height")
    alpha_min: float = Field(0.05, ge=0.0, le=1.0, description="α ~ U(alpha_min, alpha_max): the foreign image's share")
    alpha_max: float = Field(0.95, ge=0.0, le=1.0, description="upper end of the α law")
    soft_label: bool = Field(True, description="variant fpi: also return the label α in extras['soft_mask']")
    overflow: Literal["wrap", "clip"] = Field("wrap", description=(
        "variant asbench: 8-bit values past 0 or 255 wrap around as NumPy's uint8 cast does in ASBench ('wrap'), "
        "or saturate ('clip')"))

    @model_validator(mode="after")
    def _ranges_ordered(self) -> FPIParams:
        if self.width_min >= self.width_max:
            raise ValueError(f"width_min ({self.width_min}) must be < width_max ({self.width_max})")
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must be <= alpha_max ({self.alpha_max})")
        return self


def _randint(rng: torch.Generator, lo: int, hi: int) -> int:
    """NumPy's ``randint(lo, hi)`` law (hi exclusive) from ``rng``; an empty range gives ``lo``."""
    return int(torch.randint(lo, max(hi, lo + 1), (1,), generator=rng))


def _rand(rng: torch.Generator) -> float:
    return float(torch.rand(1, generator=rng, dtype=torch.float64))


def _box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boxes ``[B,4]`` (y0, y1, x0, x1; half-open) as a bool ``[B,1,H,W]`` mask."""
    h, w = size
    rows, cols = torch.arange(h, device=boxes.device), torch.arange(w, device=boxes.device)
    in_r = (rows >= boxes[:, 0, None]) & (rows < boxes[:, 1, None])
    in_c = (cols >= boxes[:, 2, None]) & (cols < boxes[:, 3, None])
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def _disc_masks(centres: torch.Tensor, radii: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixels strictly closer than the radius to the centre (ASBench's ``dist < radius``), bool ``[B,1,H,W]``.

    On integer coordinates ``sqrt(d²) < r`` is ``d² < r²``, computed exactly in integers.
    """
    h, w = size
    dy = torch.arange(h, device=centres.device)[None, :] - centres[:, 0, None]
    dx = torch.arange(w, device=centres.device)[None, :] - centres[:, 1, None]
    d2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2
    return (d2 < (radii ** 2)[:, None, None])[:, None]


class FPI(Generator):
    name = "fpi"
    title = "FPI: a foreign patch interpolated into the same place"
    category = "cutpaste"
    tags = ("asbench", "self-supervised", "mask", "soft-label")
    paper = Paper("Detecting Outliers with Foreign Patch Interpolation", venue="MELBA", year=2022,
                  url="https://arxiv.org/abs/2011.04197", code_url="https://github.com/jemtan/FPI")
    Params = FPIParams
    preserves_outside_mask = True
    #: drivers pair a second normal image as conditions.source_image: the output then does not depend on batching
    requires = Requires(accepts=("source_image",))

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        if self.params.variant == "asbench" or self.params.source != "auto":
            self.requires = Requires()  # reads no paired source: refuse one rather than ignore it

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        if self.params.variant == "asbench":
            return Samples(self._sample_disc(rng, batch.size) for rng in rngs)
        paired = self.params.source == "auto" and batch.conditions.source_image is not None
        if len(batch) == 1 and not paired:
            raise ConditionError(f"{self.name}: a batch of one image has no other image to interpolate with: pass "
                                 "conditions.source_image (the drivers pair one) or a larger batch")
        return Samples(self._sample_patch(i, len(batch), rng, batch.size, paired) for i, rng in enumerate(rngs))

    def _sample_patch(self, i: int, n: int, rng: torch.Generator, size: tuple[int, int], paired: bool) -> dict:
        p = self.params
        h, w = size
        u = _rand(rng)  # the batch-mate draw is always made: a fixed number of draws per sample
        mate = None if paired else (i + 1 + int(u * (n - 1))) % n
        centre = []
        for side in (h, w):  # as patch_ex: offset = (1 − cp)·n/2, high = offset + cp·n, truncated by randint
            offset = (1 - p.core_percent) * side / 2
            centre.append(_randint(rng, int(offset), int(offset + p.core_percent * side)))
        half = max(1, _randint(rng, round(p.width_min * h), round(p.width_max * h)))
        alpha = p.alpha_min + (p.alpha_max - p.alpha_min) * _rand(rng)
        (cy, cx) = centre
        box = [max(cy - half, 0), min(cy + half, h), max(cx - half, 0), min(cx + half, w)]
        return {"variant": "fpi", "source": "paired" if paired else "batch", "source_index": mate,
                "centre": centre, "half_width": half, "box": box, "alpha": alpha}

    def _sample_disc(self, rng: torch.Generator, size: tuple[int, int]) -> dict:
        h, w = size
        centre = []
        for side in (h, w):  # FPI_generation.py: core = n/2, offset = core/2, randint(offset, offset + core)
            core = side / 2
            centre.append(_randint(rng, int(core / 2), int(core / 2 + core)))
        radius = max(1, _randint(rng, round(0.05 * h), round(0.10 * h)))
        draw = _rand(rng)  # intensity = 0.2·R + (0.3·R − 0.2·R)·draw, R = max − min of the 8-bit image
        negative = _randint(rng, 0, 2) == 1
        return {"variant": "asbench", "centre": centre, "radius": radius, "intensity_draw": draw, "negative": negative}

    # -- applying -----------------------------------------------------------------------------
    def apply(self, batch: Batch, samples: Samples) -> Batch:
        wrong = {s["variant"] for s in samples} - {self.params.variant}
        if wrong:
            raise ValueError(f"{self.name}: records of variant {sorted(wrong)} replayed with variant={self.params.variant!r}")
        out = copy.copy(batch)  # shallow: keeps object_mask/depth/text without re-validating the input
        if self.params.variant == "asbench":
            out.image, mask = self._apply_disc(batch, samples)
        else:
            out.image, mask, soft = self._apply_patch(batch, samples)
        out.mask = mask.float()
        out.label = [LABEL if a else GOOD for a in mask.flatten(1).any(1).tolist()]
        out.meta = [dict(m) for m in batch.meta]
        out.extras = dict(batch.extras)
        if self.params.variant == "fpi" and self.params.soft_label:
            out.extras["soft_mask"] = soft
        return out

    def _foreign(self, batch: Batch, samples: Samples) -> torch.Tensor:
        """The foreign image of every sample, ``[B,3,H,W]``."""
        if all(s["source"] == "paired" for s in samples):
            if batch.conditions.source_image is None:
                raise ConditionError(f"{self.name}: the records were drawn with conditions.source_image; pass it again")
            return batch.conditions.source_image
        if any(s["source"] == "paired" for s in samples):
            raise ValueError(f"{self.name}: cannot mix records with a paired source and batch-mate records")
        mates = [s["source_index"] for s in samples]
        if any(j is None or not 0 <= j < len(batch) for j in mates):
            raise ValueError(f"{self.name}: batch-mate source indices {mates} do not fit a batch of {len(batch)}")
        return batch.image[mates]

    def _apply_patch(self, batch: Batch, samples: Samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = batch.image
        foreign = self._foreign(batch, samples).to(image)
        box = _box_masks(torch.tensor([s["box"] for s in samples], dtype=torch.long, device=image.device), batch.size)
        alpha = torch.tensor([s["alpha"] for s in samples], dtype=image.dtype, device=image.device)[:, None, None, None]
        # patch_ex's label: the patch where the two images differ in some channel (elsewhere nothing changes)
        label = box & (image != foreign).any(1, keepdim=True)
        # lerp with weight 0 returns the image bit for bit; inside the patch (1 − α)·I + α·S, which is I
        # again wherever S equals I, so pixels outside the label are untouched
        result = torch.lerp(image, foreign, alpha * box)
        return result, label, alpha * label

    def _apply_disc(self, batch: Batch, samples: Samples) -> tuple[torch.Tensor, torch.Tensor]:
        image = batch.image
        dev = image.device
        disc = _disc_masks(torch.tensor([s["centre"] for s in samples], dtype=torch.long, device=dev),
                           torch.tensor([s["radius"] for s in samples], dtype=torch.long, device=dev), batch.size)
        levels = (image.double() * 255).round()  # ASBench works on the 8-bit image (exact for k/255 inputs)
        span = levels.flatten(1).amax(1) - levels.flatten(1).amin(1)  # uint8 max − min over all channels
        lo, hi = 0.2 * span, 0.3 * span
        draw = torch.tensor([s["intensity_draw"] for s in samples], dtype=torch.float64, device=dev)
        shift = lo + (hi - lo) * draw  # numpy's uniform(low, high) = low + (high − low)·u
        shift = torch.where(torch.tensor([s["negative"] for s in samples], device=dev), -shift, shift)
        shifted = torch.trunc(levels + shift[:, None, None, None])  # float → uint8 truncates toward zero ...
        shifted = shifted.remainder(256) if self.params.overflow == "wrap" else shifted.clamp(0, 255)  # ... and wraps
        result = torch.where(disc, (shifted.float() / 255.0), image)
        return result, disc
