"""DRAEM's anomaly generator, step by step as in the paper and its ``data_loader.py``.

1. With probability ``1 - probability`` the sample stays normal (DRAEM: 0.5).
2. Perlin noise with ``2**randint(0, 6)`` lattice cells per axis (independently), rotated
   by U(-90°, 90°) with zero fill, thresholded at 0.5 → an irregular blob mask ``M``.
3. An anomaly-source texture (DTD in the paper; here scikit-image's bundled textures, a
   user DTD folder, or anomalib's Perlin-as-texture fallback), resized to the image, then
   3 of DRAEM's 10 augmenters drawn without replacement and applied in the drawn order
   (on the uint8 texture, as imgaug does).
4. β ~ U(0, 0.8); inside the mask the texture is blended with opacity 1 − β:
   ``I' = I·(1−M) + (1−β)·T·M + β·I·M``. Outside the mask the image is untouched.
5. A sample whose mask came out empty is labelled normal (as DRAEM does).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator

from anoplug import augment
from anoplug.generator import Generator, Paper, Samples
from anoplug.noise import perlin_masks, sample_gradients
from anoplug.params import Params
from anoplug.types import GOOD, Batch


class DraemParams(Params):
    probability: float = Field(0.5, ge=0.0, le=1.0, description="chance that a sample gets an anomaly (DRAEM: 0.5)")
    beta_max: float = Field(0.8, ge=0.0, le=1.0, description="β ~ U(0, beta_max) keeps β·image inside the mask")
    threshold: float = Field(0.5, ge=-1.0, le=1.0, description="Perlin noise threshold for the mask")
    min_scale_exp: int = Field(0, ge=0, le=8, description="Perlin cells per axis are 2**randint(min, max)")
    max_scale_exp: int = Field(6, ge=1, le=9, description="exclusive upper exponent of the Perlin scale law")
    rotation: float = Field(90.0, ge=0.0, le=180.0, description="noise rotated by U(-rotation, rotation) degrees")
    n_augmenters: int = Field(3, ge=0, le=10, description="texture augmenters drawn without replacement of 10")
    texture_source: str = Field("skimage", min_length=1,
                                description="'skimage' (bundled photos), 'perlin' (anomalib fallback) or a DTD folder")

    @model_validator(mode="after")
    def _scales_ordered(self) -> DraemParams:
        if self.min_scale_exp >= self.max_scale_exp:
            raise ValueError(f"min_scale_exp ({self.min_scale_exp}) must be < max_scale_exp ({self.max_scale_exp})")
        return self


class Draem(Generator):
    name = "draem"
    title = "DRAEM Perlin-noise texture anomaly"
    category = "cutpaste"
    tags = ("perlin", "texture", "baseline")
    paper = Paper("DRAEM – A discriminatively trained reconstruction embedding for surface anomaly detection",
                  venue="ICCV", year=2021, url="https://arxiv.org/abs/2108.07610",
                  code_url="https://github.com/VitjanZ/DRAEM")
    Params = DraemParams
    preserves_outside_mask = True
    label_name: ClassVar[str] = "draem"

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        from anoplug.data.textures import TexturesBySize

        # the texture set at each batch size (aspect ignored, as DRAEM resizes to 256²); files load lazily
        self._texture_source = TexturesBySize(self.params.texture_source, absent="perlin")

    # -- sampling and applying --------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        p = self.params
        n_tex = len(self._texture_source)
        out = Samples()
        for rng in rngs:
            anomalous = bool(torch.rand(1, generator=rng) < p.probability)
            e = torch.randint(p.min_scale_exp, p.max_scale_exp, (2,), generator=rng)
            scales = (int(2 ** int(e[0])), int(2 ** int(e[1])))
            grads = sample_gradients(rng, scales)
            angle = float((torch.rand(1, generator=rng) * 2 - 1) * p.rotation)
            texture = int(torch.randint(0, max(n_tex, 1), (1,), generator=rng))
            order = torch.randperm(len(augment.NAMES), generator=rng)[: p.n_augmenters].tolist()
            chain = [(augment.NAMES[k], augment.sample_params(augment.NAMES[k], rng)) for k in order]
            beta = float(torch.rand(1, generator=rng) * p.beta_max)
            out.append({"anomalous": anomalous, "scales": scales, "gradients": grads, "angle": angle,
                        "texture": texture, "augmenters": chain, "beta": beta})
        return out

    def apply(self, batch: Batch, samples: Samples) -> Batch:
        idx = [i for i, s in enumerate(samples) if s["anomalous"]]
        if len(idx) < len(batch):  # some samples stay as they are
            out = batch.clone()
        else:  # every pixel tensor is replaced below: no need to copy the input's
            out = copy.copy(batch)
            out.label, out.meta, out.extras = list(batch.label), [dict(m) for m in batch.meta], dict(batch.extras)
        if not idx:
            return out
        h, w = batch.size
        sub = [samples[i] for i in idx]
        noise, mask = perlin_masks([s["gradients"] for s in sub], (h, w), self.params.threshold,
                                   torch.tensor([s["angle"] for s in sub]))
        if self.params.texture_source == "perlin":  # anomalib's DTD-free fallback, as an 8-bit picture
            tex = (0.5 * noise + 0.25).mul_(255).round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
            tex = tex.contiguous()
        else:
            tex = self._texture_source((h, w)).stack([s["texture"] for s in sub], dtype=torch.uint8)
        # The augmenters work on uint8, as imgaug does in the original.
        tex = augment.apply_chains(tex, [s["augmenters"] for s in sub]).float().div_(255.0)
        everyone = len(idx) == len(batch)
        image = batch.image if everyone else batch.image[idx]
        beta = torch.tensor([s["beta"] for s in sub], dtype=image.dtype)[:, None, None, None]
        # Inside the mask (1-β)·T + β·I, a convex mix of values in [0,1]; outside, I bit for bit.
        # lerp with a 0/1 weight returns either end exactly, and is much cheaper than torch.where on CPU.
        result = torch.lerp(image, torch.lerp(tex, image, beta), mask)
        if everyone:
            out.image, out.mask = result, mask
        else:
            out.image[idx], out.mask[idx] = result, mask
        nonempty = mask.flatten(1).any(1).tolist()
        for j, i in enumerate(idx):
            out.label[i] = self.label_name if nonempty[j] else GOOD
        return out
