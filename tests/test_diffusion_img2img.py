"""``anoplug.diffusion.img2img``: diffusers' img2img/inpaint ``strength`` on the host sampler."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, HeunDiscreteScheduler

from anoplug.diffusion.img2img import Truncated, start_latent


def test_strength_keeps_the_last_int_n_strength_steps() -> None:
    """Catches running every step from pure noise: 0.7 of 10 DDIM steps runs the last 7, in order."""
    inner = DDIMScheduler()
    s = Truncated(DDIMScheduler(), 0.7)
    s.set_timesteps(10)
    inner.set_timesteps(10)
    assert torch.equal(s.timesteps, inner.timesteps[3:])
    assert s.config.num_train_timesteps == 1000  # everything else is the wrapped scheduler's


def test_a_second_order_scheduler_keeps_whole_steps() -> None:
    """Catches slicing by steps instead of steps·order (the pipelines' get_timesteps): Heun has 2 timesteps per step."""
    inner, s = HeunDiscreteScheduler(), Truncated(HeunDiscreteScheduler(), 0.5)
    s.set_timesteps(10)
    inner.set_timesteps(10)
    assert inner.order == 2 and torch.equal(s.timesteps, inner.timesteps[5 * 2:])


def test_start_latent_is_the_source_noised_to_the_first_kept_step() -> None:
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sched = DDIMScheduler()
    x = start_latent(sched, z0, eps, 10, 0.7)
    probe = Truncated(DDIMScheduler(), 0.7)
    probe.set_timesteps(10)
    assert torch.allclose(x, sched.add_noise(z0, eps, probe.timesteps[:1].repeat(2)))
    assert not torch.allclose(x, z0)
    assert torch.equal(start_latent(sched, z0, eps, 10, 0.0), z0)  # no step runs: the source itself
    with pytest.raises(ValueError, match="strength"):
        Truncated(sched, 1.5)
