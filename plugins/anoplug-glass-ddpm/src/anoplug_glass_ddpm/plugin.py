"""Entry point: registers the generator; imports nothing heavy (no torch)."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("glass-ddpm", "anoplug_glass_ddpm.glass_ddpm:GlassDDPM",
                          title="Glass-defect DDPM: unconditional pixel DDPM trained on defects only",
                          category="diffusion-image", needs_fit=True)]
