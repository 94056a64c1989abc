"""Entry point: registers the generator; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("pdig", "anoplug_pdig.method:Pdig",
                          title="PDIG: PV defects from semantic concept embeddings, a style adaptor and "
                                "boundary-smoothing constraints", category="diffusion-text", tags=("mask",), needs_fit=True)]
