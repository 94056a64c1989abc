"""Entry point of the SuperSimpleNet plugin: registers the spec only (no torch import here)."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("supersimplenet", "anoplug_supersimplenet.supersimplenet:SuperSimpleNet",
                          title="SuperSimpleNet: Gaussian feature noise inside Perlin masks",
                          category="speed", tags=("feature",), needs_fit=False)]
