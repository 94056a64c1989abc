"""Entry point of ``anoplug-asbench``: the hybrid generator and the ``bench`` / ``evaluate`` verbs; imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("hybrid", "anoplug_asbench.hybrid:Hybrid", title="ASBench hybrid: equal mixture of generators",
                          category="evaluation", tags=("asbench",))]


@hookimpl
def anoplug_commands(subparsers) -> None:
    from anoplug_asbench.cli import add_commands  # argparse only; the engine is imported when a verb runs

    add_commands(subparsers)
