"""Entry point of ``anoplug-asbench``: registers the hybrid generator; imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("hybrid", "anoplug_asbench.hybrid:Hybrid", title="ASBench hybrid: equal mixture of generators",
                          category="evaluation", tags=("asbench",))]
