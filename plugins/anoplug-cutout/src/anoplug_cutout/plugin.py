"""Entry point of the ``anoplug-cutout`` distribution: registers, imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("cutout", "anoplug_cutout.cutout:CutOut", title="CutOut: a black square hole (ASBench)",
                          category="cutpaste", tags=("asbench", "mask", "baseline"))]
