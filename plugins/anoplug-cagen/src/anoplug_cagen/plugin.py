"""Entry point: registers CAGEN without importing torch or diffusers."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("cagen", "anoplug_cagen.method:Cagen",
                          title="CAGEN: ControlNet mask-controlled anomalies with latent fusion",
                          category="diffusion-image", tags=("mask",), needs_fit=True)]
