"""Spec records returned by the registration hooks.

They are plain dataclasses with no torch import, so an entry-point module can build
them cheaply: listing plugins never pays for importing torch or diffusers. The
``factory`` is a lazy ``"module:Attribute"`` string resolved only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from anoplug._version import API_VERSION

#: The seed taxonomy of the survey (ARCHITECTURE.md); ``category`` is the primary one.
CATEGORIES: dict[str, str] = {
    "speed": "1. Improving generation speed",
    "cutpaste": "2.1 CutPaste-style",
    "gan": "2.2 GAN",
    "diffusion-text": "2.3.1 Text-based diffusion",
    "diffusion-image": "2.3.2 Image-based diffusion",
    "multimodal-text-image": "2.3.3.1 Text-image multi-modal diffusion",
    "multimodal-image-depth": "2.3.3.2 Image-depth multi-modal diffusion",
    "feature": "2.4 Feature-level",
    "mask": "3. Precise mask",
    "evaluation": "4. Quality judgement",
}


def resolve_factory(factory: str) -> Any:
    """Import ``"package.module:Attr"`` and return the attribute."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"factory {factory!r} must look like 'package.module:Attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class _Spec:
    name: str
    factory: str | Any
    title: str = ""
    api_version: str = API_VERSION

    def load(self) -> Any:
        """The registered class (or object), importing its module on first use."""
        return resolve_factory(self.factory) if isinstance(self.factory, str) else self.factory


@dataclass(frozen=True)
class GeneratorSpec(_Spec):
    """Registers one generator. ``category`` is one of :data:`CATEGORIES`."""

    category: str = "cutpaste"
    tags: tuple[str, ...] = ()
    needs_fit: bool = False


@dataclass(frozen=True)
class EvaluatorSpec(_Spec):
    """Registers one evaluator."""

    kind: str = "set"  # per_sample | set | downstream


@dataclass(frozen=True)
class DatasetSpec(_Spec):
    """Registers a dataset loader. ``scheme`` is the ``--data SCHEME:...`` prefix."""

    scheme: str = ""
    description: str = ""
    categories: tuple[str, ...] = field(default_factory=tuple)
