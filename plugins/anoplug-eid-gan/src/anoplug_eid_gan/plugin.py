"""Entry point: registers EID-GAN without importing torch."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("eid-gan", "anoplug_eid_gan.eidgan:EIDGAN",
                          title="EID-GAN: DCGAN with an outlier-crop penalty for extremely imbalanced data",
                          category="gan", tags=("dcgan", "tiny-defects"), needs_fit=True)]
