"""ControlNet training on a frozen latent diffusion model (Zhang et al. 2023; AdaBLDM §10, CAGEN).

A ControlNet is a trainable copy of the UNet's encoder (``ControlNetModel.from_unet`` copies
the input convolution, time embedding, down blocks and mid block) plus a small convolutional
*conditioning embedding* that turns the pixel-space hint (a trimap, an anomaly mask, an edge
map) into a feature map of the latent's size. Its outputs — one residual per UNet skip
connection and one for the mid block — pass through 1×1 convolutions initialised to zero, so
an untrained ControlNet adds exactly nothing and the frozen UNet starts from its own
behaviour; only the ControlNet learns (AdaBLDM's ``sd_locked=True``).

**The conditioning embedding must down-sample by the VAE factor.** It halves the resolution
``len(conditioning_embedding_out_channels) − 1`` times; diffusers' default (16, 32, 96, 256)
is ×8, right for SD. The tiny base's VAE is ×4 (64 px → 16×16 latents), so it needs three
entries; :func:`embedding_channels` derives them from the VAE factor and
:func:`make_controlnet` refuses a mismatch, which would otherwise fail deep inside the
forward with a shape error (or, for a 2× larger hint, silently train on the wrong scale).

Weights are saved with ``save_pretrained`` and read back with
``ControlNetModel.from_pretrained(dir)``, so ``StableDiffusionControlNetPipeline`` takes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anoplug.diffusion.finetune.common import ADAM_WEIGHT_DECAY, MAX_GRAD_NORM, fit, noise_prediction_loss
from anoplug.diffusion.finetune.conditioned import (
    ConditionedLatents,
    load_pretrained,
    repeat_rows,
    save_pretrained,
    trainable,
)

__all__ = ["DEFAULT_EMBEDDING_CHANNELS", "embedding_channels", "make_controlnet", "control_residuals", "controlled_eps",
           "ControlledModel", "controlnet_loss", "train_controlnet", "save_controlnet", "load_controlnet",
           "edge_hint", "trimap_hint"]

#: diffusers' (and the original SD ControlNet's) conditioning-embedding widths: ×8 down-sampling.
DEFAULT_EMBEDDING_CHANNELS: tuple[int, ...] = (16, 32, 96, 256)


def embedding_channels(vae_factor: int, widths: tuple[int, ...] = DEFAULT_EMBEDDING_CHANNELS) -> tuple[int, ...]:
    """The first ``log2(vae_factor) + 1`` of ``widths``: a conditioning embedding that down-samples by ``vae_factor``."""
    n = int(round(math.log2(vae_factor))) + 1 if vae_factor >= 1 else 0
    if vae_factor < 1 or 2 ** (n - 1) != vae_factor:
        raise ValueError(f"the VAE factor must be a power of two, got {vae_factor}")
    if n > len(widths):
        raise ValueError(f"a ×{vae_factor} VAE needs {n} embedding widths, only {len(widths)} given")
    return tuple(widths[:n])


def make_controlnet(unet: Any, *, vae_factor: int, conditioning_channels: int = 3,
                    conditioning_embedding_out_channels: tuple[int, ...] | None = None, seed: int = 0) -> Any:
    """A ControlNet copied from ``unet``'s encoder, with a hint embedding for a ×``vae_factor`` VAE.

    The new layers (hint embedding; the zero convolutions are zero anyway) are initialised under
    ``seed`` without touching the global RNG. ``Parts.vae_factor`` gives ``vae_factor``.
    """
    from diffusers import ControlNetModel

    from anoplug.diffusion.tiny import seeded

    widths = tuple(conditioning_embedding_out_channels or embedding_channels(vae_factor))
    if 2 ** (len(widths) - 1) != vae_factor:
        raise ValueError(f"conditioning_embedding_out_channels {widths} down-sample by {2 ** (len(widths) - 1)}, "
                         f"but the VAE down-samples by {vae_factor}: use {len(embedding_channels(vae_factor))} widths "
                         f"(e.g. {embedding_channels(vae_factor)}), or the hint will not match the latent")
    with seeded(seed):
        net = ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels,
                                        conditioning_embedding_out_channels=widths)
    return net.to(unet.device).eval()


def control_residuals(controlnet: Any, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, hint: torch.Tensor, *,
                      conditioning_scale: float = 1.0, guess_mode: bool = False
                      ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The ControlNet's residuals for the UNet's skip connections and mid block (``hint`` in [0, 1])."""
    down, mid = controlnet(x_t, t, encoder_hidden_states=text, controlnet_cond=hint.to(x_t.dtype),
                           conditioning_scale=conditioning_scale, guess_mode=guess_mode, return_dict=False)
    return tuple(down), mid


def controlled_eps(unet: Any, controlnet: Any, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                   hint: torch.Tensor, *, control_text: torch.Tensor | None = None,
                   conditioning_scale: float = 1.0) -> torch.Tensor:
    """The UNet's prediction with the ControlNet's residuals added.

    ``control_text`` is what the ControlNet branch sees (default: ``text``); AdaBLDM gives it the
    empty prompt while the UNet gets the caption (``cldm.py``).
    """
    down, mid = control_residuals(controlnet, x_t, t, text if control_text is None else control_text, hint,
                                  conditioning_scale=conditioning_scale)
    return unet(x_t, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample


@dataclass(eq=False)
class ControlledModel:
    """``model(x_t, t, cond) -> ε`` for :func:`anoplug.diffusion.sampling.sample`, with a fixed hint.

    The hint (and ``control_text``) are repeated to the batch, so the ``[uncond; cond]`` batch of
    classifier-free guidance sees the hint in both halves, as diffusers' ControlNet pipeline does.
    """

    unet: Any
    controlnet: Any
    hint: torch.Tensor
    control_text: torch.Tensor | None = None
    conditioning_scale: float = 1.0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n = len(x_t)
        ctext = None if self.control_text is None else repeat_rows(self.control_text, n)
        return controlled_eps(self.unet, self.controlnet, x_t, t, cond, repeat_rows(self.hint, n), control_text=ctext,
                              conditioning_scale=self.conditioning_scale)


def controlnet_loss(parts: Any, controlnet: Any, data: ConditionedLatents, *, batch_size: int,
                    generator: torch.Generator, empty_control_prompt: bool = False) -> torch.Tensor:
    """One step's ε-MSE (:func:`.common.noise_prediction_loss`) of the frozen UNet plus ``controlnet``.

    Draws the items, then the timesteps and noise. ``empty_control_prompt``: the ControlNet
    branch gets the empty prompt (AdaBLDM's quirk), the UNet the caption.
    """
    idx = data.draw(batch_size, generator)
    hint = data.condition[idx]
    ctext = repeat_rows(data.empty_text, len(idx)) if empty_control_prompt else None

    def model(x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return controlled_eps(parts.unet, controlnet, x_t, t, encoder_hidden_states, hint, control_text=ctext)

    return noise_prediction_loss(model, parts.scheduler, data.latents[idx], data.text[idx], generator=generator)


def train_controlnet(parts: Any, controlnet: Any, data: ConditionedLatents, *, steps: int, generator: torch.Generator,
                     lr: float = 1e-5, batch_size: int = 4, weight_decay: float = ADAM_WEIGHT_DECAY,
                     clip_grad_norm: float | None = MAX_GRAD_NORM, empty_control_prompt: bool = False,
                     **trainer_options: Any) -> list[dict]:
    """Train only ``controlnet`` with the UNet, VAE and text encoder frozen; return the history.

    AdamW (AdaBLDM: lr 1e-5, batch 4; diffusers' ControlNet example: weight decay 1e-2, gradient
    norm clipped at 1). ``trainer_options`` go to :func:`.common.fit` (checkpoints, resume,
    accumulation, mixed precision, progress).
    """
    parts.freeze()
    controlnet.requires_grad_(True)
    params = trainable(controlnet, "controlnet")
    trainer = fit({"controlnet": controlnet}, list(params.values()),
                  lambda ctx: controlnet_loss(parts, controlnet, data, batch_size=batch_size, generator=ctx.generator,
                                              empty_control_prompt=empty_control_prompt),
                  steps=steps, generator=generator, lr=lr, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
                  checkpoint_params=params, desc="controlnet", **trainer_options)
    return trainer.history


def save_controlnet(controlnet: Any, directory: str | Path) -> Path:
    """``save_pretrained`` (config + safetensors): the layout ``ControlNetModel.from_pretrained`` reads."""
    return save_pretrained(controlnet, directory)


def load_controlnet(directory: str | Path, device: str | torch.device = "cpu") -> Any:
    """``ControlNetModel.from_pretrained`` on a local directory (never the hub)."""
    return load_pretrained("ControlNetModel", directory, device)


# -- hints ----------------------------------------------------------------------------------------------------------
def edge_hint(images: torch.Tensor) -> torch.Tensor:
    """``[N,1,H,W]`` Sobel edge magnitude of the grey images, each scaled to [0, 1] (an edge-map hint)."""
    from skimage.filters import sobel

    grey = images.detach().float().cpu().mean(1).numpy()
    edges = np.stack([sobel(g) for g in grey]).astype(np.float32)
    peak = edges.reshape(len(edges), -1).max(1).clip(min=1e-8)
    return torch.from_numpy(edges / peak[:, None, None])[:, None].to(images.device)


def trimap_hint(mask: torch.Tensor, object_mask: torch.Tensor | None = None) -> torch.Tensor:
    """AdaBLDM's trimap ``[N,3,H,W]``: background 0, object 127/255, defect 1 (textures: all object)."""
    m = (mask > 0.5).float()
    obj = torch.ones_like(m) if object_mask is None else (object_mask > 0.5).float()
    tri = torch.where(m > 0, torch.ones_like(m), obj * (127 / 255))
    return tri.expand(-1, 3, -1, -1).contiguous()
