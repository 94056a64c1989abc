"""Entry point: registers the generator; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl

TITLE = ("AnomalyControl (He et al.): reference anomaly + caption as Q-Former semantics, steered by ASEA, "
         "injected by SGA into an inpainting UNet")


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("anomalycontrol", "anoplug_anomalycontrol.method:AnomalyControl", title=TITLE,
                          category="multimodal-text-image", tags=("mask",), needs_fit=True)]
