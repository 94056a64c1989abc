"""Entry point of the PBAS plugin: registers the spec only (no torch import here)."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("pbas", "anoplug_pbas.pbas:PBAS",
                          title="PBAS: progressive boundary-guided feature-level anomaly synthesis",
                          category="feature", tags=(), needs_fit=False)]
