"""Entry point of the ``anoplug-fpi`` distribution: registers, imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("fpi", "anoplug_fpi.fpi:FPI", title="FPI: a foreign patch interpolated into the same place",
                          category="cutpaste", tags=("asbench", "self-supervised", "mask", "soft-label"))]
