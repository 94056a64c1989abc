"""anoplug: synthetic anomaly generation for industrial visual inspection.

Importing ``anoplug`` is cheap and does not import torch: plugin entry-point modules
do ``from anoplug import hookimpl, GeneratorSpec``. Heavy names (``Batch``,
``Generator``, ...) are resolved lazily on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from anoplug._version import API_VERSION, __version__
from anoplug.hookspecs import hookimpl
from anoplug.specs import CATEGORIES, DatasetSpec, EvaluatorSpec, GeneratorSpec

_LAZY = {
    "Batch": "anoplug.types",
    "BatchError": "anoplug.types",
    "Generator": "anoplug.generator",
    "FeatureGenerator": "anoplug.generator",
    "Paper": "anoplug.generator",
    "Requires": "anoplug.generator",
    "NotFittedError": "anoplug.generator",
    "Samples": "anoplug.serial",
    "Conditions": "anoplug.conditions",
    "ConditionError": "anoplug.conditions",
    "LearnedGenerator": "anoplug.learned",
    "LearnedFeatureGenerator": "anoplug.learned",
    "Evaluator": "anoplug.evaluator",
    "Report": "anoplug.evaluator",
    "Metric": "anoplug.evaluator",
    "Params": "anoplug.params",
    "ParamError": "anoplug.params",
    "sample_seed": "anoplug.seeding",
    "explore": "anoplug.widgets",
    "compare": "anoplug.widgets",
    "open_dataset": "anoplug.data",
}

__all__ = ["API_VERSION", "__version__", "hookimpl", "CATEGORIES", "GeneratorSpec", "EvaluatorSpec", "DatasetSpec",
           "get_generator", "get_evaluator", "list_generators", "register", "unregister", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from anoplug.conditions import ConditionError, Conditions  # noqa: F401
    from anoplug.evaluator import Evaluator, Metric, Report  # noqa: F401
    from anoplug.generator import FeatureGenerator, Generator, NotFittedError, Paper, Requires  # noqa: F401
    from anoplug.learned import LearnedFeatureGenerator, LearnedGenerator  # noqa: F401
    from anoplug.params import ParamError, Params  # noqa: F401
    from anoplug.serial import Samples  # noqa: F401
    from anoplug.types import Batch, BatchError  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anoplug' has no attribute {name!r}")


def get_generator(name: str, **params: Any) -> Any:
    """The one public entry: an instance of the generator registered as ``name``.

    ``params`` are validated by the method's ``Params`` model (a bad value raises
    :class:`anoplug.ParamError` naming the field).
    """
    from anoplug.registry import get_registry

    return get_registry().get_generator(name, **params)


def get_evaluator(name: str, **params: Any) -> Any:
    """An instance of the evaluator registered as ``name``."""
    from anoplug.registry import get_registry

    return get_registry().get_evaluator(name, **params)


def list_generators(category: str | None = None) -> list[str]:
    """Names of registered generators, optionally of one category."""
    from anoplug.registry import get_registry

    specs = get_registry().specs("generators")
    return [n for n, s in specs.items() if category is None or s.category == category or category in s.tags]


def register(obj: Any, name: str | None = None) -> str:
    """Register a plugin object (e.g. a class with ``@hookimpl`` methods defined in a notebook cell)."""
    from anoplug.registry import get_registry

    return get_registry().register(obj, name)


def unregister(name: str) -> None:
    """Remove a plugin registered with :func:`register`."""
    from anoplug.registry import get_registry

    get_registry().unregister(name)
