"""Entry point: registers the generator; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("comgen", "anoplug_comgen.method:Comgen",
                          title="ComGEN: component-aware logical anomalies from learned component embeddings",
                          category="diffusion-text", tags=("mask",), needs_fit=True)]
