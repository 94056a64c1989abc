"""Entry point: registers SeaS without importing torch or diffusers."""

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [GeneratorSpec("seas", "anoplug_seas.seas:SeaS",
                          title="SeaS: separation and sharing fine-tuning with a refined mask head", category="mask",
                          tags=("diffusion-image",), needs_fit=True)]
