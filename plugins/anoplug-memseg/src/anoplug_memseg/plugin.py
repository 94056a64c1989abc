"""Entry point of the ``anoplug-memseg`` distribution: registers, imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("memseg", "anoplug_memseg.memseg:Memseg",
                          title="MemSeg abnormal synthesis: Perlin ∩ foreground, texture or shuffled structure",
                          category="cutpaste", tags=("perlin", "texture", "structure", "asbench"))]
