"""The ``strength`` of diffusers' ``StableDiffusionInpaintPipeline`` (paper step 5) on the host's sampling loop.

With a 9-channel UNet the pipeline does not paste the known region per step (the UNet sees
the mask and the masked-image latent instead); ``strength`` < 1 only shortens the schedule:

1. of ``num_steps`` scheduler steps the last ``min(int(num_steps·strength), num_steps)`` run, i.e.
   ``timesteps[t_start · order:]`` with ``t_start = num_steps − that`` (``get_timesteps``);
2. the start latent is the source latent noised to the first kept timestep,
   ``add_noise(z0, ε, t_first)`` (``prepare_latents`` with ``is_strength_max = False``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Truncated", "start_latent"]


class Truncated:
    """A scheduler whose ``set_timesteps`` keeps the pipeline's last ``int(n·strength)`` steps; the rest is the inner one."""

    def __init__(self, scheduler: Any, strength: float) -> None:
        self._inner = scheduler
        self._strength = float(strength)
        self.timesteps: torch.Tensor | None = None

    def set_timesteps(self, num_steps: int, device: Any = None) -> None:
        self._inner.set_timesteps(num_steps, device=device)
        keep = min(int(num_steps * self._strength), num_steps)
        start = max(num_steps - keep, 0) * int(getattr(self._inner, "order", 1))
        self.timesteps = self._inner.timesteps[start:]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def start_latent(scheduler: Any, z0: torch.Tensor, noise: torch.Tensor, num_steps: int, strength: float) -> torch.Tensor:
    """Step 2: ``z0`` noised to the first kept timestep (``z0`` itself when no step runs)."""
    probe = Truncated(scheduler, strength)
    probe.set_timesteps(num_steps, device=z0.device)
    if len(probe.timesteps) == 0:
        return z0.clone()
    return scheduler.add_noise(z0, noise, probe.timesteps[:1].repeat(len(z0)))
