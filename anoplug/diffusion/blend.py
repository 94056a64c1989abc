"""Mask-preserving ("blended") sampling: generate inside a mask, keep the rest of an image.

The official codes differ in *when* they put the known background back (spec §2.1). For
mask ``m`` (1 = generate) and the clean latent ``z0`` of the normal image:

- ``"before"``: before each step ``x_t ← m·x_t + (1−m)·q(z0, t)`` with fresh noise
  (AnomalyDiffusion, AnoGen, AdaBLDM's latent stage);
- ``"after"``: after each step ``x_{t−1} ← m·x_{t−1} + (1−m)·q(z0, t)`` — note the noise
  level is ``t``, not ``t−1``: an off-by-one of the original (AnomalyAny), kept on purpose;
- ``"pixel_x0"``: from a fraction of the steps on, decode the predicted ``x̂0``, paste the
  source pixels outside the mask, re-encode and continue from it (AdaBLDM's last steps);
- ``"composite"``: no blending while sampling; the result is alpha-composited over the
  source with a Gaussian-blurred mask (σ = 5 px) at the end (AnomalyControl).

No sampler reproduces the background exactly, so :func:`finish` also offers a bit-exact
paste of the source outside the mask. Every random draw comes from the sample's own
``torch.Generator`` (noise for ``q(z0, t)`` and the scheduler's variance noise), so a
sample does not depend on the batch it is in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from anoplug.ops import gaussian_blur

__all__ = ["BlendMode", "BLEND_MODES", "per_sample_randn", "step_index", "blended_sample", "finish",
           "predicted_x0"]

BlendMode = Literal["before", "after", "pixel_x0", "composite", "none"]
BLEND_MODES: tuple[str, ...] = ("before", "after", "pixel_x0", "composite", "none")

Denoise = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def per_sample_randn(shape: Sequence[int], rngs: Sequence[torch.Generator], device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise ``[len(rngs), *shape]``, row *i* drawn from ``rngs[i]`` only."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in rngs]).to(device)


def step_index(fraction: float, num_steps: int) -> int:
    """A step-count constant written as a fraction (e.g. AdaBLDM's 25 of 50 → 0.5), for any step count."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(num_steps, int(round(fraction * num_steps)))


def predicted_x0(scheduler, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """x̂0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t for an ε-predicting model."""
    a = scheduler.alphas_cumprod.to(x_t.device)[int(t)]
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask.float(), size=size, mode="nearest")


@torch.no_grad()
def blended_sample(denoise: Denoise, scheduler, z0: torch.Tensor, mask: torch.Tensor | Callable[[int, int], torch.Tensor],
                   *, rngs: Sequence[torch.Generator], num_steps: int, eta: float = 0.0, mode: BlendMode = "before",
                   x_T: torch.Tensor | None = None, decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   encode: Callable[[torch.Tensor], torch.Tensor] | None = None, source: torch.Tensor | None = None,
                   pixel_mask: torch.Tensor | None = None, pixel_x0_from: float = 0.5,
                   on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the reverse process from noise to a latent that keeps ``z0`` outside ``mask``.

    ``denoise(x_t, t, i)`` returns the model's ε for the batch; ``mask`` is a latent-size
    tensor ``[B,1,h,w]`` (1 = generate) or a callable ``(i, t) -> mask`` for masks that
    change per step (AnomalyDiffusion's dilation). ``"pixel_x0"`` needs ``decode``,
    ``encode``, the ``source`` image in [0, 1] and its ``pixel_mask``.
    """
    if mode not in BLEND_MODES:
        raise ValueError(f"unknown blend mode {mode!r}; use one of {BLEND_MODES}")
    if len(rngs) != len(z0):
        raise ValueError(f"need one generator per sample: {len(rngs)} for {len(z0)}")
    if mode == "pixel_x0" and (decode is None or encode is None or source is None or pixel_mask is None):
        raise ValueError("blend mode 'pixel_x0' needs decode, encode, source and pixel_mask")
    device = z0.device
    mask_at = mask if callable(mask) else (lambda i, t: mask)
    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps
    x = per_sample_randn(z0.shape[1:], rngs, device) * scheduler.init_noise_sigma if x_T is None else x_T.clone()
    pixel_start = step_index(pixel_x0_from, len(timesteps))
    step_kw = {"eta": eta} if "eta" in scheduler.step.__code__.co_varnames else {}
    for i, t in enumerate(timesteps):
        m = _resize_mask(mask_at(i, int(t)), tuple(z0.shape[-2:])).to(device)
        if mode == "before":
            bg = scheduler.add_noise(z0, per_sample_randn(z0.shape[1:], rngs, device), t.reshape(1))
            x = m * x + (1 - m) * bg
        eps = denoise(scheduler.scale_model_input(x, t), t, i)
        if mode == "pixel_x0" and i >= pixel_start:
            x0 = predicted_x0(scheduler, x, eps, t)
            pix = decode(x0)
            pm = _resize_mask(pixel_mask, tuple(pix.shape[-2:])).to(device)
            x0 = encode(pm * pix + (1 - pm) * source.to(device))
            a = scheduler.alphas_cumprod.to(device)[int(t)]
            x = a.sqrt() * x0 + (1 - a).sqrt() * eps  # the same ε now implies the pasted x̂0
        x = scheduler.step(eps, t, x, generator=list(rngs), **step_kw).prev_sample
        if mode == "after":
            bg = scheduler.add_noise(z0, per_sample_randn(z0.shape[1:], rngs, device), t.reshape(1))
            x = m * x + (1 - m) * bg
        if on_step is not None:
            on_step(i, int(t), x)
    return x


def finish(generated: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, *, mode: BlendMode = "before",
           composite_sigma: float = 5.0, paste: bool = False) -> torch.Tensor:
    """Final pixel-space step: the blurred-mask composite of ``"composite"``, then the optional exact paste.

    With ``paste=True`` every pixel where ``mask == 0`` is the source's, bit for bit.
    """
    out = generated.clamp(0, 1)
    m = _resize_mask(mask, tuple(out.shape[-2:])).to(out.device)
    if mode == "composite":
        alpha = gaussian_blur(m, composite_sigma).clamp(0, 1)
        out = alpha * out + (1 - alpha) * source
    if paste:
        out = torch.where(m.expand_as(out) > 0.5, out, source)
    return out
