"""Entry point of the ``anoplug-draem`` distribution: registers, imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("draem", "anoplug_draem.draem:Draem", title="DRAEM Perlin-noise texture anomaly",
                          category="cutpaste", tags=("perlin", "texture", "baseline"))]
