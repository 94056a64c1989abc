"""The anoplug hook specifications (pluggy project name ``"anoplug"``).

Hooks only *register* things or *observe* events; behaviour lives on the registered
objects. Every hook below is documented under its exact signature in
``docs/plugin_hooks.md`` (``tests/test_docs.py`` enforces it).
"""

from __future__ import annotations

from typing import Any

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


@hookspec(historic=True)
def anoplug_configure(config: dict) -> None:
    """Receive the host configuration (device, cache dir, smoke mode) once it is known.

    Historic: a plugin registered later still receives the call.
    """


@hookspec(firstresult=True)
def anoplug_make_explorer(spec: Any, images: Any, fixed: dict) -> Any:
    """Return a custom widget explorer for ``spec`` or ``None`` to use the automatic one."""


@hookspec
def anoplug_before_generate(spec: Any, params: dict, n_images: int) -> None:
    """Observe the start of a generation call."""


@hookspec
def anoplug_after_generate(spec: Any, params: dict, batch: Any, seconds: float) -> None:
    """Observe a finished generation call and its result ``batch``."""


@hookspec
def anoplug_on_generate_error(spec: Any, params: dict, error: BaseException) -> None:
    """Observe a failed generation call (the error is re-raised afterwards)."""
