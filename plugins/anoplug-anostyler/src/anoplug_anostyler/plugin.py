"""Entry point: registers AnoStyler; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("anostyler", "anoplug_anostyler.method:Anostyler",
                          title="AnoStyler: text-driven localized anomalies by lightweight CLIP style transfer",
                          category="multimodal-text-image", tags=("mask",), needs_fit=False)]
