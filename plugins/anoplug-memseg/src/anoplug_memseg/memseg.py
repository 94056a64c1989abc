"""MemSeg's abnormal synthesis (Yang, Wu, Feng — EAAI 2023), as its widely used code and ASBench run it.

No official code was released; TooTouch/MemSeg (MIT) is the reference implementation and ASBench
vendors it (``MemSeg/data/dataset.py``). Per anomalous sample (``generate_anomaly``):

1. mask ``M = P ∧ F``: ``P`` is DRAEM's Perlin mask (``2**randint(0, 6)`` cells per axis, noise
   rotated by U(−90°, 90°), ``> 0.5``); ``F`` the target foreground — the grey image
   binarised at a per-class threshold (``cv2.threshold``; kept below it, or above it when
   ``bg_reverse``) for objects, all ones for textures (``anomaly_mask.json``). Here the batch's
   ``object_mask`` is used when it has one (``foreground="auto"``);
2. anomaly source ``S``, half of the time each: a texture image (DTD, resized, *not* augmented),
   or the *structure* source — the image itself after 3 of DRAEM's 10 augmenters (drawn without
   replacement), cut into an 8 × 8 grid of tiles that are randomly permuted;
3. blend with opacity ``f ~ U(0.15, 1)``: ``I' = M·(f·S + (1 − f)·I) + (1 − M)·I``, cast to 8 bits
   (truncated). Outside the mask the image is untouched.

With probability 1 − ``probability`` the sample stays normal (ASBench's ``percent``, 0.5; the
reference alternates normal and anomalous samples). Empty masks are labelled normal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from anoplug.generator import Generator, Paper, Samples
from anoplug.noise import perlin_masks, sample_gradients
from anoplug.ops import anomalous_subset, write_anomalies
from anoplug.params import Params
from anoplug.types import Batch, BatchError

__all__ = ["Memseg", "MemsegParams", "MVTEC_FOREGROUND", "ASBENCH_PIPELINES", "mvtec_params", "foreground_rule",
           "shuffle_grid"]

#: ``anomaly_mask.json`` of the reference code: class -> (use_mask, bg_threshold, bg_reverse)
MVTEC_FOREGROUND: dict[str, tuple[bool, int | None, bool | None]] = {
    "hazelnut": (True, 50, True), "leather": (False, None, None), "metal_nut": (True, 40, True),
    "tile": (False, None, None), "wood": (False, None, None), "grid": (False, None, None),
    "cable": (False, 150, True), "capsule": (True, 120, False), "transistor": (True, 90, False),
    "carpet": (False, None, None), "bottle": (True, 250, False), "screw": (True, 110, False),
    "zipper": (True, 100, False), "pill": (True, 100, True), "toothbrush": (True, 30, True),
}

#: ASBench runs three copies of the synthesis, one per detection pipeline, with different settings
#: (the parameters that differ from the defaults; see the README for the file and line of each)
ASBENCH_PIPELINES: dict[str, dict[str, Any]] = {
    "memseg": {},  # MemSeg/data/dataset.py + configs.yaml + anomaly_mask.json: the reference law
    "draem": {"transparency_min": 0.0, "transparency_max": 0.8, "foreground": "threshold", "bg_threshold": 100,
              "bg_reverse": False},
    "destseg": {"rotation": 0.0, "structure_augment": False, "foreground": "threshold", "bg_threshold": 100,
                "bg_reverse": False},
}


def mvtec_params(category: str) -> dict[str, Any]:
    """The reference code's foreground setting of an MVTec AD class, as ``Memseg`` parameters."""
    if category not in MVTEC_FOREGROUND:
        raise KeyError(f"no MemSeg foreground setting for {category!r}; known: {', '.join(sorted(MVTEC_FOREGROUND))}")
    use, thr, rev = MVTEC_FOREGROUND[category]
    return {"foreground": "threshold", "bg_threshold": thr, "bg_reverse": bool(rev)} if use else {"foreground": "none"}


class MemsegParams(Params):
    probability: float = Field(0.5, ge=0.0, le=1.0, description="chance a sample gets an anomaly (ASBench percent 0.5)")
    threshold: float = Field(0.5, ge=-1.0, le=1.0, description="Perlin noise threshold of the mask")
    min_scale_exp: int = Field(0, ge=0, le=8, description="Perlin cells per axis are 2**randint(min, max)")
    max_scale_exp: int = Field(6, ge=1, le=9, description="exclusive upper exponent of the Perlin scale law")
    rotation: float = Field(90.0, ge=0.0, le=180.0, description="noise rotated by U(-rotation, rotation) degrees")
    transparency_min: float = Field(0.15, ge=0.0, le=1.0, description="source opacity f ~ U(min, max)")
    transparency_max: float = Field(1.0, ge=0.0, le=1.0, description="upper end of the source opacity")
    texture_probability: float = Field(0.5, ge=0.0, le=1.0,
                                       description="chance the source is a texture rather than the structure grid")
    texture_source: str = Field("skimage", min_length=1,
                                description="'skimage' (bundled photos), a DTD folder, or 'none' (structure only)")
    structure_grid: int = Field(8, ge=1, le=64, description="the structure source shuffles a grid × grid tiling")
    structure_augment: bool = Field(True, description="augment the image (DRAEM's 3 of 10) before tiling it")
    n_augmenters: int = Field(3, ge=0, le=10, description="augmenters drawn without replacement for the structure source")
    foreground: Literal["auto", "object_mask", "threshold", "none"] = Field(
        "auto", description="mask restriction: the batch's object_mask if any else the grey threshold (auto), "
                            "object_mask, threshold, or none (all ones, textures)")
    bg_threshold: int = Field(100, ge=0, le=255, description="grey level that binarises the image into foreground")
    bg_reverse: bool = Field(False, description="foreground is above bg_threshold (else at or below it)")
    quantize: bool = Field(True, description="truncate the blend to 8-bit levels, as the reference's uint8 cast")

    @model_validator(mode="after")
    def _ranges(self) -> MemsegParams:
        if self.min_scale_exp >= self.max_scale_exp:
            raise ValueError(f"min_scale_exp ({self.min_scale_exp}) must be < max_scale_exp ({self.max_scale_exp})")
        if self.transparency_min > self.transparency_max:
            raise ValueError(f"transparency_min ({self.transparency_min}) must be <= transparency_max "
                             f"({self.transparency_max})")
        return self


def _gray(levels: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit ``COLOR_RGB2GRAY``: ``(4899 R + 9617 G + 1868 B + 2¹³) >> 14`` of ``[n, 3, H, W]`` levels."""
    r, g, b = (levels[:, c:c + 1].to(torch.int64) for c in range(3))
    return (4899 * r + 9617 * g + 1868 * b + 8192) >> 14


def foreground_rule(levels: torch.Tensor, threshold: int, reverse: bool) -> torch.Tensor:
    """MemSeg's ``generate_target_foreground_mask``: ``[n, 1, H, W]`` float, 1 on the foreground.

    ``cv2.threshold(grey, t, 255, THRESH_BINARY)`` marks ``grey > t`` as background; the
    foreground is the rest, or that set itself when ``reverse``.
    """
    above = _gray(levels) > int(threshold)
    return (above if reverse else ~above).float()


def shuffle_grid(x: torch.Tensor, grid: int, perms: torch.Tensor) -> torch.Tensor:
    """Tile ``[n, C, H, W]`` into ``grid × grid`` blocks (row-major) and put tile ``perms[i, t]`` at place ``t``."""
    n, c, h, w = x.shape
    if h % grid or w % grid:
        raise BatchError(f"the structure source needs image sides divisible by structure_grid={grid}, got {h}x{w}")
    gh, gw = h // grid, w // grid
    tiles = x.reshape(n, c, grid, gh, grid, gw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, gh, gw)
    tiles = torch.gather(tiles, 1, perms[:, :, None, None, None].expand(-1, -1, c, gh, gw))
    return tiles.reshape(n, grid, grid, c, gh, gw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


class Memseg(Generator):
    name = "memseg"
    title = "MemSeg abnormal synthesis: Perlin ∩ foreground, texture or shuffled structure"
    category = "cutpaste"
    tags = ("perlin", "texture", "structure", "asbench")
    paper = Paper("MemSeg: A semi-supervised method for image surface defect detection using differences and "
                  "commonalities", venue="Engineering Applications of Artificial Intelligence", year=2023,
                  url="https://arxiv.org/abs/2205.00908", code_url="https://github.com/TooTouch/MemSeg")
    Params = MemsegParams
    preserves_outside_mask = True
    label_name: ClassVar[str] = "memseg"

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        from anoplug.data.textures import TexturesBySize

        # the texture set at each batch size (MemSeg resizes its DTD textures to the image); files load lazily
        self._texture_source = TexturesBySize(self.params.texture_source, absent="none")

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        from anoplug import augment

        p = self.params
        n_tex = len(self._texture_source)
        cells = p.structure_grid ** 2
        out = Samples()
        for rng in rngs:
            anomalous = bool(torch.rand(1, generator=rng) < p.probability)
            e = torch.randint(p.min_scale_exp, p.max_scale_exp, (2,), generator=rng)
            scales = (int(2 ** int(e[0])), int(2 ** int(e[1])))
            rec: dict[str, Any] = {"anomalous": anomalous, "scales": scales, "gradients": sample_gradients(rng, scales),
                                   "angle": float((torch.rand(1, generator=rng) * 2 - 1) * p.rotation)}
            texture = n_tex > 0 and bool(torch.rand(1, generator=rng) < p.texture_probability)
            rec["source"] = "texture" if texture else "structure"
            if texture:
                rec["texture"] = int(torch.randint(n_tex, (1,), generator=rng))
            else:
                chain = []
                if p.structure_augment:
                    order = torch.randperm(len(augment.NAMES), generator=rng)[: p.n_augmenters].tolist()
                    chain = [(augment.NAMES[k], augment.sample_params(augment.NAMES[k], rng)) for k in order]
                rec["augmenters"] = chain
                rec["permutation"] = torch.randperm(cells, generator=rng).tolist()
            rec["opacity"] = p.transparency_min + (p.transparency_max - p.transparency_min) * float(
                torch.rand(1, generator=rng, dtype=torch.float64))
            out.append(rec)
        return out

    # -- applying ------------------------------------------------------------------------------------
    def _foreground(self, batch: Batch, idx: list[int], levels: torch.Tensor) -> torch.Tensor:
        p = self.params
        mode = p.foreground
        if mode == "auto":
            mode = "object_mask" if batch.object_mask is not None else "threshold"
        if mode == "none":
            return torch.ones(len(idx), 1, *batch.size)
        if mode == "object_mask":
            if batch.object_mask is None:
                raise BatchError("memseg: foreground='object_mask' needs batch.object_mask")
            return (batch.object_mask[idx] > 0.5).float()
        return foreground_rule(levels, p.bg_threshold, p.bg_reverse)

    def _sources_for(self, levels: torch.Tensor, sub: Sequence[dict], size: tuple[int, int]) -> torch.Tensor:
        """Every sample's anomaly source ``[k, 3, H, W]`` as 8-bit levels (float64)."""
        from anoplug import augment

        src = torch.empty_like(levels)
        tex = [j for j, s in enumerate(sub) if s["source"] == "texture"]
        if tex:
            src[tex] = self._texture_source(size).stack([sub[j]["texture"] for j in tex], dtype=torch.uint8).to(src.dtype)
        struct = [j for j, s in enumerate(sub) if s["source"] == "structure"]
        if struct:
            img = levels[struct].to(torch.uint8)  # the reference augments the uint8 image (imgaug)
            img = augment.apply_chains(img, [sub[j]["augmenters"] for j in struct])
            perms = torch.tensor([sub[j]["permutation"] for j in struct])
            src[struct] = shuffle_grid(img, self.params.structure_grid, perms).to(src.dtype)
        return src

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        p = self.params
        out, idx = anomalous_subset(batch, samples)
        if not idx:
            return out
        h, w = batch.size
        sub = [samples[i] for i in idx]
        image = batch.image[idx]
        levels = (image.clamp(0, 1) * 255).round_().to(torch.float64)
        _, perlin = perlin_masks([s["gradients"] for s in sub], (h, w), p.threshold,
                                 torch.tensor([s["angle"] for s in sub]))
        mask = perlin * self._foreground(batch, idx, levels)
        source = self._sources_for(levels, sub, (h, w))
        f = torch.tensor([s["opacity"] for s in sub], dtype=torch.float64)[:, None, None, None]
        blend = f * source + (1 - f) * levels  # the reference's order of operations, in float64
        if p.quantize:
            blend = blend.floor_()
        result = torch.where(mask.bool(), blend.div_(255.0).to(image.dtype), image)
        return write_anomalies(out, idx, result, mask, self.label_name)
