"""Entry point: registers the generator; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl

TITLE = ("Anomagic: zero-shot cross-product defects from a masked reference image prompt, "
         "with contrastive mask refinement")


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("anomagic", "anoplug_anomagic.method:Anomagic", title=TITLE,
                          category="multimodal-text-image", tags=("mask",), needs_fit=True)]
