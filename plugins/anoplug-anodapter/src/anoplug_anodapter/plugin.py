"""Entry point: registers the generator; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("anodapter", "anoplug_anodapter.method:Anodapter",
                          title="Anodapter: one DreamBooth model and two T2I-Adapters generating aligned anomaly "
                                "masks and images",
                          category="diffusion-image", tags=("mask",), needs_fit=True)]
