"""Entry point: registers DT-GAN without importing torch."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("dt-gan", "anoplug_dt_gan.dtgan:DTGAN",
                          title="Defect Transfer GAN (DT-GAN): defect styles transferred across products",
                          category="gan", tags=(), needs_fit=True)]
