"""Entry point: registers AnomalyAny without importing torch or diffusers."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("anomalyany", "anoplug_anomalyany.anomalyany:AnomalyAny",
                          title="AnomalyAny: unseen anomalies from one normal image and a prompt (attention + CLIP guided SD)",
                          category="diffusion-text", tags=("mask",))]
