"""Fractal anomaly generation (FAG) of FractalAD, as ASBench runs it.

Per anomalous sample (``DRAEM/Fractal_Aug.py`` of ASBench, ``fag.py`` of FractalAD):

1. a square patch of side ``c = int(U(0.1·m, 0.5·m))`` (``m`` the shorter image side) is cut
   at ``(int(U(0.1·H, 0.9·H − c)), int(U(0.1·W, 0.9·W − c)))``;
2. colour: one of three, uniformly — ``ColorJitter(0.2, 0.2, 0.2, 0.2)``,
   ``ColorJitter(brightness=1, contrast=1)``, or ``ChangeColor`` (two channels times ``2·U(0,1)``, wrapping);
3. flipped left-right and top-bottom, each with probability ½, rotated by ``U(15°, 75°)``
   (PIL, nearest, box kept): the rotated square's footprint is kept;
4. a fractal: two random contractive affine maps, 100 000 chaos-game points rendered into a
   ``c × c`` binary image with a random 3×3 stamp (:mod:`anoplug_fractal.ifs`); the paste
   mask is footprint ∧ fractal;
5. the patch is pasted (hard) through that mask at an independent position with the same law;
6. the label mask is the paste mask dilated by 3 iterations of a 3×3 square; with probability ½,
   Gaussian noise (σ = 10 grey levels, one value per pixel for all channels) is added inside it;
7. ASBench only: ``ColorJitter(0.05, 0.05, 0.05, 0.05)`` on the whole anomalous image (FractalAD
   applies the same draw to the clean image as well, a data augmentation of both, which a
   generator cannot do: ``global_jitter=0`` is FractalAD's setting).

The ASBench dataset wrapper keeps a sample normal with probability 1 − ``percent`` (0.5);
FractalAD makes every training sample anomalous (``probability=1``) and, for five MVTec classes,
cuts and pastes on the object (``find_object``). All values are 8-bit levels, as in PIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from anoplug.generator import Generator, Paper, Samples
from anoplug.ops import anomalous_subset, write_anomalies
from anoplug.params import Params
from anoplug.types import Batch
from anoplug_fractal import geometry, ifs
from anoplug_fractal.jitter import change_color, jitter

__all__ = ["Fractal", "FractalParams"]

_MODES = ("color", "brightness-contrast", "channels")  # FAG.Jitter's RandomChoice, in its order
_FIND_TRIES = 10_000


class FractalParams(Params):
    probability: float = Field(0.5, ge=0.0, le=1.0,
                               description="chance a sample gets an anomaly (ASBench percent 0.5; FractalAD 1)")
    size_min: float = Field(0.1, gt=0.0, le=1.0, description="patch side ≥ size_min × shorter image side (lb)")
    size_max: float = Field(0.5, gt=0.0, le=1.0, description="patch side < size_max × shorter image side (hb)")
    region_min: float = Field(0.1, ge=0.0, lt=1.0, description="patches lie inside [region_min, region_max] of each side")
    region_max: float = Field(0.9, gt=0.0, le=1.0, description="upper end of the region patches are cut from and pasted to")
    rotation_min: float = Field(15.0, ge=-360.0, le=360.0, description="patch rotated by U(rotation_min, rotation_max)°")
    rotation_max: float = Field(75.0, ge=-360.0, le=360.0, description="upper end of the patch rotation, degrees")
    patch_jitter: float = Field(0.2, ge=0.0, le=0.5,
                                description="ColorJitter strength of the first colour choice (all four operations)")
    noise_probability: float = Field(0.5, ge=0.0, le=1.0, description="chance of Gaussian noise inside the dilated mask")
    noise_amplitude: float = Field(10.0, ge=0.0, le=255.0, description="noise σ in grey levels (0..255)")
    dilation: int = Field(3, ge=0, le=32, description="label mask = paste mask dilated by this many 3×3 iterations")
    maps: int = Field(2, ge=1, le=8, description="affine maps of the iterated function system")
    iterations: int = Field(100_000, ge=100, le=1_000_000, description="chaos-game points rendered into the fractal")
    global_jitter: float = Field(0.05, ge=0.0, le=0.5,
                                 description="ColorJitter of the whole anomalous image (ASBench 0.05; FractalAD 0)")
    find_object: bool = Field(False, description="cut and paste on the object (FractalAD's is_findobj; object_mask or its rule)")

    @model_validator(mode="after")
    def _ranges(self) -> FractalParams:
        if self.size_min >= self.size_max:
            raise ValueError(f"size_min ({self.size_min}) must be < size_max ({self.size_max})")
        if self.region_min >= self.region_max:
            raise ValueError(f"region_min ({self.region_min}) must be < region_max ({self.region_max})")
        if self.region_max - self.region_min < self.size_max:
            raise ValueError(f"region_max - region_min ({self.region_max - self.region_min:g}) must hold a patch of "
                             f"size_max ({self.size_max})")
        if self.rotation_min > self.rotation_max:
            raise ValueError(f"rotation_min ({self.rotation_min}) must be <= rotation_max ({self.rotation_max})")
        return self


def _u(rng: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=rng, dtype=torch.float64))


def _jitter_draw(rng: torch.Generator, strength: tuple[float, float, float, float]) -> dict:
    """torchvision ``ColorJitter.get_params``: an order of the four operations, then their factors."""
    order = torch.randperm(4, generator=rng).tolist()
    b, c, s, h = strength
    factors = [_u(rng, max(0.0, 1 - b), 1 + b), _u(rng, max(0.0, 1 - c), 1 + c), _u(rng, max(0.0, 1 - s), 1 + s),
               _u(rng, -h, h)]
    return {"order": order, "factors": factors}


class Fractal(Generator):
    name = "fractal"
    title = "FractalAD fractal anomaly generation (ASBench)"
    category = "cutpaste"
    tags = ("fractal", "ifs", "self-supervised", "asbench")
    paper = Paper("FractalAD: A simple industrial anomaly detection method using fractal anomaly generation and "
                  "backbone knowledge distillation", venue="arXiv", year=2023, url="https://arxiv.org/abs/2301.12739",
                  code_url="https://github.com/AIRS-CSR/FractalAD")
    Params = FractalParams
    preserves_outside_mask = False  # ASBench's global jitter touches every pixel; global_jitter=0 keeps them

    # -- sampling ------------------------------------------------------------------------------
    def _positions(self, rng: torch.Generator, h: int, w: int, cut: int) -> list[int]:
        p = self.params
        return [int(_u(rng, h * p.region_min, h * p.region_max - cut)), int(_u(rng, w * p.region_min, w * p.region_max - cut))]

    def _object(self, batch: Batch, i: int) -> tuple[np.ndarray, float] | None:
        """The object mask (the batch's, else FractalAD's rule) and its extent, or None when it has no contour."""
        if batch.object_mask is not None:
            obj = (batch.object_mask[i, 0] > 0.5).to(torch.uint8).mul_(255).numpy()
        else:
            img = (batch.image[i].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            obj = geometry.object_rule_mask(img)
        extent = geometry.object_extent(obj)
        return None if extent is None else (obj, extent)

    @staticmethod
    def _on_object(rng: torch.Generator, obj: np.ndarray, cut: int) -> list[int] | None:
        """FAG.coord_in_mask: centres ``(int(U(c//2, H − c//2)), int(U(c//2, W − c//2)))`` until one is on the object."""
        h, w = obj.shape
        half = cut // 2
        for _ in range(_FIND_TRIES):
            y, x = int(_u(rng, half, h - half)), int(_u(rng, half, w - half))
            if 0 <= y < h and 0 <= x < w and obj[y, x] > 0:
                return [y - half, x - half]
        return None

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        p = self.params
        h, w = batch.size
        m = min(h, w)
        out = Samples()
        for i, rng in enumerate(rngs):
            anomalous = bool(torch.rand(1, generator=rng) < p.probability)
            cut = int(_u(rng, p.size_min * m, p.size_max * m))
            src = dst = None
            found = self._object(batch, i) if p.find_object else None
            if found is not None:
                obj, extent = found
                cut = int(_u(rng, 0.5 * p.size_min * extent, 3 * p.size_max * extent))
                cut = min(max(cut, 1), m)
                src = self._on_object(rng, obj, cut)
            cut = min(max(cut, 1), m)
            if src is None:
                src = self._positions(rng, h, w, cut)
            mode = int(torch.randint(3, (1,), generator=rng))
            rec: dict[str, Any] = {"anomalous": anomalous, "cut": cut, "src": src, "jitter_mode": _MODES[mode]}
            if mode == 0:
                j = p.patch_jitter
                rec["jitter"] = _jitter_draw(rng, (j, j, j, j))
            elif mode == 1:
                rec["jitter"] = _jitter_draw(rng, (1.0, 1.0, 0.0, 0.0))
            else:
                rec["channels"] = torch.randint(3, (2,), generator=rng).tolist()
                rec["channel_draws"] = torch.rand(2, generator=rng, dtype=torch.float64).tolist()
            rec["flip_lr"] = bool(torch.rand(1, generator=rng) > 0.5)
            rec["flip_tb"] = bool(torch.rand(1, generator=rng) > 0.5)
            rec["angle"] = _u(rng, p.rotation_min, p.rotation_max)
            if found is not None:
                dst = self._on_object(rng, found[0], cut)
            rec["dst"] = dst if dst is not None else self._positions(rng, h, w, cut)
            rec["system"] = ifs.sample_system(rng, p.maps)
            rec["chaos_seed"] = int(torch.randint(2**62, (1,), generator=rng))
            rec["stamp"] = ifs.sample_stamp(rng)
            rec["noise"] = bool(torch.rand(1, generator=rng) < p.noise_probability)
            rec["noise_seed"] = int(torch.randint(2**62, (1,), generator=rng))
            g = p.global_jitter
            rec["global_jitter"] = _jitter_draw(rng, (g, g, g, g))
            out.append(rec)
        return out

    # -- applying ------------------------------------------------------------------------------------
    def _fractals(self, sub: Sequence[dict]) -> list[torch.Tensor]:
        """Every sample's ``cut × cut`` binary fractal, the chaos game run for all of them at once."""
        uniforms = torch.stack([torch.rand(self.params.iterations, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(s["chaos_seed"])) for s in sub])
        points = ifs.chaos_game([s["system"] for s in sub], uniforms)
        return [ifs.render_binary(points[j], s["cut"], s["stamp"]) for j, s in enumerate(sub)]

    @staticmethod
    def _patch(levels: torch.Tensor, s: dict) -> torch.Tensor:
        """The cut patch after colour change and flips, ``[3, c, c]`` levels."""
        c, (y, x) = s["cut"], s["src"]
        patch = levels[:, y:y + c, x:x + c]
        if s["jitter_mode"] == "channels":
            patch = change_color(patch, s["channels"], s["channel_draws"])
        else:
            active = (True, True, True, True) if s["jitter_mode"] == "color" else (True, True, False, False)
            j = s["jitter"]
            patch = jitter(patch[None], torch.tensor([j["factors"]], dtype=torch.float64),
                           torch.tensor([j["order"]]), active)[0]
        if s["flip_lr"]:
            patch = patch.flip(-1)
        if s["flip_tb"]:
            patch = patch.flip(-2)
        return patch

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        p = self.params
        out, idx = anomalous_subset(batch, samples)
        if not idx:
            return out
        h, w = batch.size
        sub = [samples[i] for i in idx]
        image = batch.image[idx]
        levels = (image.clamp(0, 1) * 255).round_().to(torch.float64)
        paste = torch.zeros(len(idx), 1, h, w)
        for j, (s, fractal) in enumerate(zip(sub, self._fractals(sub))):
            rotated, footprint = geometry.rotate_square(self._patch(levels[j], s), s["angle"])
            keep = footprint & fractal
            c, (y, x) = s["cut"], s["dst"]
            region = levels[j, :, y:y + c, x:x + c]
            region.copy_(torch.where(keep, rotated, region))
            paste[j, 0, y:y + c, x:x + c] = keep.float()
        mask = geometry.dilate(paste, p.dilation)
        for j, s in enumerate(sub):
            if s["noise"] and p.noise_amplitude > 0:
                g = torch.Generator().manual_seed(s["noise_seed"])
                n = p.noise_amplitude * torch.randn(h, w, generator=g, dtype=torch.float64)
                noisy = (levels[j] + n).clamp_(0, 255).trunc_()
                levels[j] = torch.where(mask[j].bool(), noisy, levels[j])
        if p.global_jitter > 0:
            levels = jitter(levels, torch.tensor([s["global_jitter"]["factors"] for s in sub], dtype=torch.float64),
                            torch.tensor([s["global_jitter"]["order"] for s in sub]), (True, True, True, True))
            result = levels.div_(255.0).to(image.dtype)
        else:  # outside the mask the input stays bit for bit
            result = torch.where(mask.bool(), levels.div(255.0).to(image.dtype), image)
        return write_anomalies(out, idx, result, mask, self.name)
