"""Entry point: registers Defect-GAN without importing torch."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("defect-gan", "anoplug_defect_gan.defect_gan:DefectGAN",
                          title="Defect-GAN: defacement/restoration GAN with layer-wise composition",
                          category="gan", tags=("mask",), needs_fit=True)]
