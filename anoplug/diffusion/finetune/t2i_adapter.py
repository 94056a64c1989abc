"""T2I-Adapter training on a frozen latent diffusion model (Mou et al. 2023; CAGEN-style hint control).

A T2I-Adapter is a small convolutional network apart from the UNet: it pixel-unshuffles the
hint by the VAE factor (so its first feature map has the latent's size), then a stack of
residual blocks halves the resolution once per UNet level. Each level's feature is *added* to
the output of that UNet down block (diffusers' ``down_intrablock_additional_residuals``). The
adapter runs once per image, not once per denoising step as a ControlNet does, and it is much
smaller, but it is not zero-initialised: an untrained adapter already perturbs the UNet.

Two shapes must match the base model: ``channels`` equal to the UNet's
``block_out_channels`` (each feature is added to a down block of that width) and
``downscale_factor`` equal to the VAE factor (×8 for SD, ×4 for the tiny base).
:func:`make_t2i_adapter` reads both from the models.

The paper's training recipe: the UNet frozen, Adam at lr 1e-5, and *non-uniform timestep
sampling* t = (1 − u³)·T, which draws the early, noisy steps — where the structure a hint
controls is laid down — more often (:func:`cubic_timesteps`, the default here).

Weights go through ``save_pretrained`` / ``T2IAdapter.from_pretrained(dir)``, the layout
``StableDiffusionAdapterPipeline`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anoplug.diffusion.finetune.common import MAX_GRAD_NORM, TimestepSampler, fit, noise_prediction_loss
from anoplug.diffusion.finetune.conditioned import (
    ConditionedLatents,
    load_pretrained,
    repeat_rows,
    save_pretrained,
    trainable,
)

__all__ = ["make_t2i_adapter", "adapter_features", "adapted_eps", "AdaptedModel", "cubic_timesteps", "t2i_adapter_loss",
           "train_t2i_adapter", "save_t2i_adapter", "load_t2i_adapter"]


def make_t2i_adapter(unet: Any, *, vae_factor: int, in_channels: int = 3, num_res_blocks: int = 2,
                     adapter_type: str = "full_adapter", seed: int = 0) -> Any:
    """A ``diffusers.T2IAdapter`` shaped for ``unet``: one feature per down block, the first at latent size.

    Initialised under ``seed`` without touching the global RNG. ``Parts.vae_factor`` gives ``vae_factor``.
    """
    from diffusers import T2IAdapter

    from anoplug.diffusion.tiny import seeded

    channels = list(unet.config.block_out_channels)
    with seeded(seed):
        adapter = T2IAdapter(in_channels=in_channels, channels=channels, num_res_blocks=num_res_blocks,
                             downscale_factor=vae_factor, adapter_type=adapter_type)
    expected = vae_factor * 2 ** (len(channels) - 1)
    if adapter.total_downscale_factor != expected:
        raise ValueError(f"{adapter_type} down-samples by {adapter.total_downscale_factor}, the UNet's lowest level "
                         f"is at 1/{expected} of the image")
    return adapter.to(unet.device).eval()


def adapter_features(adapter: Any, hint: torch.Tensor, scale: float = 1.0) -> list[torch.Tensor]:
    """The adapter's per-level features for ``hint`` (in [0, 1]), times ``scale``."""
    return [f * scale for f in adapter(hint.to(next(adapter.parameters()).dtype))]


def adapted_eps(unet: Any, features: list[torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
                text: torch.Tensor) -> torch.Tensor:
    """The UNet's prediction with the adapter ``features`` added to its down blocks.

    The UNet consumes the list it is given (``pop``), so it gets a copy: one set of features
    serves every denoising step.
    """
    return unet(x_t, t, encoder_hidden_states=text, down_intrablock_additional_residuals=list(features)).sample


@dataclass(eq=False)
class AdaptedModel:
    """``model(x_t, t, cond) -> ε`` for :func:`anoplug.diffusion.sampling.sample`: features computed once, reused.

    The features are repeated to the batch, so both halves of a classifier-free-guidance batch
    see the hint (as ``StableDiffusionAdapterPipeline`` does).
    """

    unet: Any
    adapter: Any
    hint: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.features = adapter_features(self.adapter, self.hint, self.scale)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        feats = [repeat_rows(f, len(x_t)) for f in self.features]
        return adapted_eps(self.unet, feats, x_t, t, cond)


def cubic_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """T2I-Adapter's non-uniform sampling t = (1 − u³)·T, u ~ U(0, 1): the noisy end drawn more often (E[t] = ¾T)."""
    u = torch.rand(n, generator=generator, device=generator.device)
    return ((1 - u ** 3) * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def t2i_adapter_loss(parts: Any, adapter: Any, data: ConditionedLatents, *, batch_size: int, generator: torch.Generator,
                     timesteps: TimestepSampler = cubic_timesteps) -> torch.Tensor:
    """One step's ε-MSE (:func:`.common.noise_prediction_loss`) of the frozen UNet plus ``adapter``.

    Draws the items, then the timesteps (``timesteps``; :func:`.common.uniform_timesteps` for
    the uniform draw) and the noise.
    """
    idx = data.draw(batch_size, generator)
    hint = data.condition[idx]

    def model(x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return adapted_eps(parts.unet, adapter_features(adapter, hint), x_t, t, encoder_hidden_states)

    return noise_prediction_loss(model, parts.scheduler, data.latents[idx], data.text[idx], generator=generator,
                                 timesteps=timesteps)


def train_t2i_adapter(parts: Any, adapter: Any, data: ConditionedLatents, *, steps: int, generator: torch.Generator,
                      lr: float = 1e-5, batch_size: int = 8, timesteps: TimestepSampler = cubic_timesteps,
                      clip_grad_norm: float | None = MAX_GRAD_NORM, **trainer_options: Any) -> list[dict]:
    """Train only ``adapter`` with the base frozen (the paper: Adam, lr 1e-5, batch 8, cubic timesteps).

    ``trainer_options`` go to :func:`.common.fit` (checkpoints, resume, accumulation, mixed
    precision, progress). Returns the history.
    """
    parts.freeze()
    adapter.requires_grad_(True)
    params = trainable(adapter, "adapter")
    trainer = fit({"adapter": adapter}, list(params.values()),
                  lambda ctx: t2i_adapter_loss(parts, adapter, data, batch_size=batch_size, generator=ctx.generator,
                                               timesteps=timesteps),
                  steps=steps, generator=generator, lr=lr, optimizer="adam", clip_grad_norm=clip_grad_norm,
                  checkpoint_params=params, desc="t2i_adapter", **trainer_options)
    return trainer.history


def save_t2i_adapter(adapter: Any, directory: str | Path) -> Path:
    """``save_pretrained`` (config + safetensors): the layout ``T2IAdapter.from_pretrained`` reads."""
    return save_pretrained(adapter, directory)


def load_t2i_adapter(directory: str | Path, device: str | torch.device = "cpu") -> Any:
    """``T2IAdapter.from_pretrained`` on a local directory (never the hub)."""
    return load_pretrained("T2IAdapter", directory, device)
