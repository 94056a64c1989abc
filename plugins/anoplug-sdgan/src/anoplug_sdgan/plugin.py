"""Entry point: registers SDGAN without importing torch."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("sdgan", "anoplug_sdgan.sdgan:SDGAN",
                          title="SDGAN: unpaired defect-free -> defective translation with D2 adversarial loss",
                          category="gan", needs_fit=True)]
