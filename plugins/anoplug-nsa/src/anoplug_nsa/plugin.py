"""Entry point of the ``anoplug-nsa`` distribution: registers, imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("nsa", "anoplug_nsa.nsa:NSA", title="NSA: Poisson-blended patches from another normal image",
                          category="cutpaste", tags=("poisson", "self-supervised", "mask"))]
