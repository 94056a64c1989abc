"""The legacy inpaint loop (paper step 4): diffusers' removed ``StableDiffusionInpaintPipelineLegacy`` on a plain UNet.

Anomagic runs a *text-to-image* UNet (4 input channels), not an inpainting one, through the
legacy pipeline (pinned ``diffusers==0.22.1``). That pipeline is img2img with the known region
re-noised and pasted at every step; re-implemented on :func:`anoplug.diffusion.sampling.sample`:

1. ``strength``: of ``num_steps`` scheduler steps only the last ``int(num_steps·strength)`` run
   (:class:`anoplug.diffusion.img2img.Truncated`); the start is ``x = add_noise(z0, ε, t_start)`` with one noise draw ε;
2. after each step, ``x ← q(z0, ε, t)·keep + x·(1 − keep)``: the known region at the step's
   level ``t``, with the *same* ε as the start (the pipeline's ``add_predicted_noise=False``);
3. after the loop, ``x ← z0·keep + x·(1 − keep)`` before decoding.

``keep = 1 − m`` with m the target mask resized (nearest) to the latent grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anoplug.diffusion.sampling import Hook, SamplingContext

__all__ = ["LegacyKnownRegion"]


@dataclass(eq=False)
class LegacyKnownRegion(Hook):
    """Steps 2 and 3: paste the re-noised known region after every step, and the clean one at the end.

    ``keep`` is ``[B, 1, h, w]`` at latent size (1 = known); ``noise`` is the start noise.
    """

    z0: torch.Tensor
    keep: torch.Tensor
    noise: torch.Tensor
    enabled: bool = True

    def after_step(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        proper = ctx.scheduler.add_noise(self.z0, self.noise, ctx.t.reshape(1))
        return proper * self.keep + x * (1 - self.keep)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.z0 * self.keep + x * (1 - self.keep) if self.enabled else x
