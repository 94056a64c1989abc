"""Test-time normal-sample conditioning: the run starts from the noised normal latent at step ``t_start``.

The official code sets the full schedule (200 steps), then keeps ``timesteps[t_start:]`` with
``t_start = N − ⌊N·γ⌋`` (γ = 0.3: the last 60 steps) and calls the scheduler's own ``step`` on
them. :class:`Img2ImgScheduler` does exactly that around any diffusers scheduler, so the shared
sampling loop (:func:`anoplug.diffusion.sampling.sample`) runs only the truncated part.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["Img2ImgScheduler", "start_index"]


def start_index(num_steps: int, gamma: float) -> int:
    """``t_start = N − int(N·γ)`` (official code); γ = 1 runs the whole schedule (a text-to-image start)."""
    return num_steps - int(num_steps * gamma)


class Img2ImgScheduler:
    """A diffusers scheduler whose ``timesteps`` after ``set_timesteps`` are the truncated tail ``[t_start:]``.

    Everything else (``step``, ``add_noise``, ``alphas_cumprod``, ...) is the wrapped scheduler's.
    ``step`` drops the keywords the wrapped scheduler does not take (PNDM, the SD default,
    takes no ``generator`` or ``eta``: it is deterministic).
    """

    def __init__(self, inner: Any, gamma: float) -> None:
        self.inner, self.gamma = inner, float(gamma)
        self.t_start = 0
        self.full_timesteps: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self._accepts = set(inspect.signature(inner.step).parameters)

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        self.inner.set_timesteps(num_inference_steps, device=device)
        self.t_start = start_index(num_inference_steps, self.gamma)
        self.full_timesteps = self.inner.timesteps
        self.timesteps = self.inner.timesteps[self.t_start:]

    @property
    def start_timestep(self) -> torch.Tensor:
        """The timestep the normal latent is noised to: ``timesteps[t_start]`` of the full schedule."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps first")
        return self.timesteps[0]

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None,
             eta: float = 0.0, return_dict: bool = True) -> Any:
        kw: dict[str, Any] = {"return_dict": return_dict}
        if "generator" in self._accepts and generator is not None:
            kw["generator"] = generator
        if "eta" in self._accepts:
            kw["eta"] = eta
        return self.inner.step(model_output, timestep, sample, **kw)

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        return getattr(self.inner, name)
