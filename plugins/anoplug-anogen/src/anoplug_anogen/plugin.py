"""Entry point: registers AnoGen without importing torch or diffusers."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("anogen", "anoplug_anogen.anogen:AnoGen",
                          title="AnoGen: few-shot textual inversion + box-blended DDIM (weak box labels)",
                          category="diffusion-image", needs_fit=True)]
