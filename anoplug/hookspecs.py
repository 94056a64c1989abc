"""The anoplug hook specifications (pluggy project name ``"anoplug"``).

Hooks only *register* things (generators, evaluators, datasets, CLI verbs); behaviour
lives on the registered objects. Every hook below is documented under its exact signature in
``docs/plugin_hooks.md`` (``tests/test_docs.py`` enforces it).
"""

from __future__ import annotations

import argparse

import pluggy

hookspec = pluggy.HookspecMarker("anoplug")
hookimpl = pluggy.HookimplMarker("anoplug")


@hookspec
def anoplug_generators() -> list:
    """Return a list of :class:`anoplug.specs.GeneratorSpec` this plugin provides."""


@hookspec
def anoplug_evaluators() -> list:
    """Return a list of :class:`anoplug.specs.EvaluatorSpec` this plugin provides."""


@hookspec
def anoplug_datasets() -> list:
    """Return a list of :class:`anoplug.specs.DatasetSpec` this plugin provides."""


@hookspec
def anoplug_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add CLI verbs: ``sp = subparsers.add_parser(NAME, ...)`` and ``sp.set_defaults(handler=FUNC)``.

    ``FUNC(args: argparse.Namespace) -> int`` runs the verb and returns the exit status. A
    plugin whose registration raises, or adds a verb without a handler, is recorded as
    failing (``anoplug plugins``); the other verbs keep working.
    """
