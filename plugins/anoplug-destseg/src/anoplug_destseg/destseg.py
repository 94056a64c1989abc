"""DeSTSeg's anomaly synthesis (Zhang, Li, Li, Huang, Shan, Chen — CVPR 2023), step by step as ``apple/ml-destseg``.

``data/data_utils.py::perlin_noise`` (its docstring: "copied from DRAEM") with the call of
``data/mvtec_dataset.py``, per image:
1. a DTD texture, read as RGB and resized to the image (PIL bilinear) — **used as is**: DeSTSeg
   drops DRAEM's three random imgaug augmenters;
2. Perlin noise with ``2**randint(0, 6)`` lattice cells per axis, rotated by U(−90°, 90°) with
   zero fill, thresholded at 0.5 → mask M (DRAEM's law);
3. β ~ U(0, 0.8): ``I' = I·(1−M) + (1−β)·T·M + β·I·M`` (DRAEM's blend);
4. with probability ``1 − aug_prob`` the image stays normal — DeSTSeg trains with ``aug_prob=1``
   (every image synthetic), DRAEM with 0.5; an empty mask is a normal sample.
The Perlin field is the host's :mod:`anoplug.noise`; textures come from the host's
:func:`anoplug.data.textures.texture_source`, which resizes with PIL bilinear as DeSTSeg does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, model_validator

from anoplug.generator import Generator, Paper, Samples
from anoplug.noise import perlin_masks, sample_gradients
from anoplug.params import Params
from anoplug.types import GOOD, Batch

LABEL = "destseg-perlin"


class DeSTSegParams(Params):
    probability: float = Field(1.0, ge=0.0, le=1.0, description="chance that a sample gets an anomaly (DeSTSeg's aug_prob: 1)")
    beta_max: float = Field(0.8, ge=0.0, le=1.0, description="β ~ U(0, beta_max) keeps β·image inside the mask")
    threshold: float = Field(0.5, ge=-1.0, le=1.0, description="Perlin noise threshold for the mask")
    min_scale_exp: int = Field(0, ge=0, le=8, description="Perlin cells per axis are 2**randint(min, max)")
    max_scale_exp: int = Field(6, ge=1, le=9, description="exclusive upper exponent (DeSTSeg 6; ASBench's DeSTSeg copy 4)")
    rotation: float = Field(90.0, ge=0.0, le=180.0, description="noise rotated by U(-rotation, rotation) degrees")
    texture_source: str = Field("skimage", min_length=1, description="'skimage' (bundled photos) or a DTD folder")

    @model_validator(mode="after")
    def _scales_ordered(self) -> DeSTSegParams:
        if self.min_scale_exp >= self.max_scale_exp:
            raise ValueError(f"min_scale_exp ({self.min_scale_exp}) must be < max_scale_exp ({self.max_scale_exp})")
        return self


class DeSTSegPerlin(Generator):
    name = "destseg-perlin"
    title = "DeSTSeg Perlin-noise texture anomaly"
    category = "cutpaste"
    tags = ("asbench", "perlin", "texture")
    paper = Paper("DeSTSeg: Segmentation Guided Denoising Student-Teacher for Anomaly Detection", venue="CVPR",
                  year=2023, url="https://arxiv.org/abs/2211.11317", code_url="https://github.com/apple/ml-destseg")
    Params = DeSTSegParams
    preserves_outside_mask = True

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self._sources: dict[tuple[int, int], Any] = {}

    def _textures(self, size: tuple[int, int]) -> Any:
        """The texture set at ``size`` (aspect ignored, as DeSTSeg resizes to 256²); files load lazily."""
        if size not in self._sources:
            from anoplug.data.textures import texture_source

            self._sources[size] = texture_source(self.params.texture_source, size=size)
        return self._sources[size]

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        p = self.params
        n_tex = len(self._textures((8, 8)))  # the count does not depend on the size; nothing is decoded yet
        out = Samples()
        for rng in rngs:
            texture = int(torch.randint(0, n_tex, (1,), generator=rng))
            e = torch.randint(p.min_scale_exp, p.max_scale_exp, (2,), generator=rng)
            scales = (int(2 ** int(e[0])), int(2 ** int(e[1])))  # (rows, columns), as rand_perlin_2d_np's res
            grads = sample_gradients(rng, scales)
            angle = float((torch.rand(1, generator=rng) * 2 - 1) * p.rotation)
            beta = float(torch.rand(1, generator=rng) * p.beta_max)
            anomalous = bool(torch.rand(1, generator=rng) < p.probability)
            out.append({"anomalous": anomalous, "texture": texture, "scales": scales, "gradients": grads,
                        "angle": angle, "beta": beta})
        return out

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        idx = [i for i, s in enumerate(samples) if s["anomalous"]]
        out = copy.copy(batch)  # shallow: keeps object_mask/depth/text without re-validating the input
        out.image, out.mask = batch.image.clone(), torch.zeros_like(batch.mask)
        out.label, out.meta, out.extras = [GOOD] * len(batch), [dict(m) for m in batch.meta], dict(batch.extras)
        if not idx:
            return out
        sub = [samples[i] for i in idx]
        _, mask = perlin_masks([s["gradients"] for s in sub], batch.size, self.params.threshold,
                               torch.tensor([s["angle"] for s in sub]))
        image = batch.image[idx]
        mask = mask.to(image)
        tex = self._textures(batch.size).stack([s["texture"] for s in sub]).to(image)  # raw texture: no augmenters
        beta = torch.tensor([s["beta"] for s in sub], dtype=image.dtype, device=image.device)[:, None, None, None]
        # inside the mask (1−β)·T + β·I; lerp with a 0/1 weight returns either end exactly, so outside it is I
        out.image[idx] = torch.lerp(image, torch.lerp(tex, image, beta), mask)
        out.mask[idx] = mask
        for j, nonempty in zip(idx, mask.flatten(1).any(1).tolist()):
            out.label[j] = LABEL if nonempty else GOOD
        return out
