"""Entry point of the ``anoplug-fractal`` distribution: registers, imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("fractal", "anoplug_fractal.fractal:Fractal", title="FractalAD fractal anomaly generation (ASBench)",
                          category="cutpaste", tags=("fractal", "ifs", "self-supervised", "asbench"))]
