"""Entry point: registers BBox-guided diffusion without importing torch or diffusers."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("bboxdiffusion", "anoplug_bboxdiffusion.bboxdiffusion:BBoxDiffusion",
                          title="BBox-guided diffusion: image and segmentation map from boxes",
                          category="diffusion-image", tags=("mask",), needs_fit=True)]
