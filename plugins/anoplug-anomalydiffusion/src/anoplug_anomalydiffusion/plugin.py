"""Entry point: registers AnomalyDiffusion without importing torch or diffusers."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("anomalydiffusion", "anoplug_anomalydiffusion.anomalydiffusion:AnomalyDiffusion",
                          title="AnomalyDiffusion: spatial anomaly embedding + blended latent diffusion",
                          category="diffusion-image", tags=("mask",), needs_fit=True)]
