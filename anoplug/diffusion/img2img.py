"""``strength`` of diffusers' img2img and inpainting pipelines, on the host's sampling loop.

Both pipelines start from the source latent noised part-way instead of from pure noise:

1. of ``num_steps`` scheduler steps only the last ``min(int(num_steps·strength), num_steps)`` run,
   i.e. ``timesteps[t_start·order:]`` with ``t_start = num_steps − that`` (their ``get_timesteps``);
2. the start latent is ``add_noise(z0, ε, t_first)`` at the first kept timestep (their
   ``prepare_latents``), ``z0`` itself when no step runs.

Shared by every plugin that edits an image at a strength (Anomagic's legacy inpaint loop,
AnomalyControl's inpainting pipeline), so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Truncated", "start_latent"]


class Truncated:
    """A scheduler whose ``set_timesteps`` keeps the pipeline's last ``int(n·strength)`` steps; the rest is the inner one.

    ``step`` and every other attribute are the wrapped scheduler's (it finds its own index from the timestep).
    """

    def __init__(self, scheduler: Any, strength: float) -> None:
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength!r}")
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
    """``z0`` noised to the first timestep that :class:`Truncated` keeps (``z0`` itself when none runs)."""
    probe = Truncated(scheduler, strength)
    probe.set_timesteps(num_steps, device=z0.device)
    if len(probe.timesteps) == 0:
        return z0.clone()
    return scheduler.add_noise(z0, noise, probe.timesteps[:1].repeat(len(z0)))
