"""Entry point of the ``anoplug-destseg`` distribution: registers, imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("destseg-perlin", "anoplug_destseg.destseg:DeSTSegPerlin",
                          title="DeSTSeg Perlin-noise texture anomaly", category="cutpaste",
                          tags=("asbench", "perlin", "texture"))]
