"""DreamBooth: fine-tune the full UNet (optionally the text encoder) on a few images with prior preservation.

Ruiz et al., "DreamBooth" (CVPR 2023), as diffusers' ``train_dreambooth.py`` implements it; the
fine-tuning the spec's Anodapter (§9, UNet + text encoder) and SeaS (§11, full UNet) build on:

1. the instance prompt binds a rare identifier to the subject, "a photo of sks {class}"
   (:func:`dreambooth_prompts`); the class prompt is the same without it;
2. **prior preservation**: before any weight changes, the *frozen* base generates class images
   for the class prompt (:func:`make_prior`; one seeded generator per image, so image *i*
   depends only on the base, the seed and *i*), encoded once by the VAE;
3. each step draws ``batch_size`` instance items and as many class items, runs them as one
   batch through the UNet, and takes the shared noise-prediction loss per sample
   (:func:`.common.noise_prediction_loss`); loss = instance ε-MSE + λ · prior ε-MSE, λ = 1
   (``prior_loss_weight``, the paper's and the example's default);
4. AdamW (lr 5e-6, weight decay 1e-2), gradient norm clipped at 1, on
   :class:`anoplug.train.Trainer`; the text encoder trains too with ``train_text_encoder``;
5. :func:`save_pipeline` writes the fine-tuned model as a diffusers pipeline directory
   (``save_pretrained``), which ``load_pipeline(directory)`` / ``from_pretrained`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anoplug.diffusion.finetune.common import (
    ADAM_WEIGHT_DECAY,
    MAX_GRAD_NORM,
    draw_indices,
    encode_latents,
    encode_prompts,
    fit,
    noise_prediction_loss,
)

__all__ = ["PRIOR_LOSS_WEIGHT", "LEARNING_RATE", "NUM_CLASS_IMAGES", "IDENTIFIER", "Prior", "dreambooth_prompts",
           "make_prior", "dreambooth_loss", "train_dreambooth", "save_pipeline"]

PRIOR_LOSS_WEIGHT = 1.0
LEARNING_RATE = 5e-6
NUM_CLASS_IMAGES = 100  # diffusers' --num_class_images
IDENTIFIER = "sks"  # the rare token of diffusers' example


@dataclass
class Prior:
    """The class images of prior preservation: their latents, their prompt, and how they were made."""

    latents: torch.Tensor
    prompt: str
    images: torch.Tensor | None = None
    seed: int | None = None


def dreambooth_prompts(class_noun: str, identifier: str = IDENTIFIER) -> tuple[str, str]:
    """(instance prompt, class prompt): "a photo of sks nut", "a photo of nut"."""
    return f"a photo of {identifier} {class_noun}", f"a photo of {class_noun}"


@torch.no_grad()
def make_prior(pipe: Any, class_prompt: str, n: int = NUM_CLASS_IMAGES, *, seed: int = 0,
               num_inference_steps: int = 50, guidance_scale: float = 7.5, size: int | None = None,
               batch_size: int = 4) -> Prior:
    """Generate ``n`` class images with ``pipe`` *before* fine-tuning it (step 2) and encode them.

    Defaults are the pipeline's (50 steps, CFG 7.5), as the example samples them. Image *i*
    uses ``torch.Generator().manual_seed(seed + i)``: the same images whatever ``n`` and
    ``batch_size`` are (up to the float rounding of a batched forward), on any device.
    """
    from anoplug.diffusion.loading import Parts

    if n < 1:
        raise ValueError("prior preservation needs at least one class image")
    parts = Parts.from_pipeline(pipe)
    side = size or int(parts.unet.config.sample_size) * parts.vae_factor
    images = []
    for start in range(0, n, batch_size):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, min(n, start + batch_size))]
        out = pipe([class_prompt] * len(gens), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   height=side, width=side, generator=gens, output_type="pt")
        images.append(out.images.float().cpu())
    imgs = torch.cat(images)
    return Prior(latents=encode_latents(parts, imgs), prompt=class_prompt, images=imgs, seed=seed)


def dreambooth_loss(parts: Any, instance_latents: torch.Tensor, instance_prompt: str, *, prior: Prior | None,
                    prior_loss_weight: float, batch_size: int, generator: torch.Generator,
                    text_grad: bool) -> dict[str, torch.Tensor]:
    """One step (step 3): instance indices, class indices, then (inside the loss) timesteps and noise."""
    idx = draw_indices(len(instance_latents), batch_size, generator)
    z, prompts = instance_latents[idx], [instance_prompt] * batch_size
    if prior is not None:
        pidx = draw_indices(len(prior.latents), batch_size, generator)
        z = torch.cat([z, prior.latents[pidx].to(z.device, z.dtype)])
        prompts += [prior.prompt] * batch_size
    per = noise_prediction_loss(parts.unet, parts.scheduler, z, lambda: encode_prompts(parts, prompts, grad=text_grad),
                                generator=generator, reduction="none")
    instance = per[:batch_size].mean()
    if prior is None:
        return {"loss": instance, "instance_loss": instance.detach()}
    prior_loss = per[batch_size:].mean()
    return {"loss": instance + prior_loss_weight * prior_loss, "instance_loss": instance.detach(),
            "prior_loss": prior_loss.detach()}


def train_dreambooth(parts: Any, instance_latents: torch.Tensor, instance_prompt: str, *, steps: int,
                     generator: torch.Generator, prior: Prior | None = None,
                     prior_loss_weight: float = PRIOR_LOSS_WEIGHT, train_text_encoder: bool = False,
                     batch_size: int = 1, lr: float = LEARNING_RATE, weight_decay: float = ADAM_WEIGHT_DECAY,
                     clip_grad_norm: float | None = MAX_GRAD_NORM, **trainer_options: Any) -> list[dict]:
    """Fine-tune ``parts`` in place for ``steps`` updates (steps 3–4); return the history.

    ``prior`` (from :func:`make_prior`, made with the base *before* this call) turns on prior
    preservation; rows then log ``instance_loss`` and ``prior_loss`` next to ``loss``. The VAE
    (and the text encoder unless ``train_text_encoder``) stays frozen. ``trainer_options``
    go to :func:`.common.fit`.
    """
    parts.freeze()
    parts.unet.requires_grad_(True)
    modules = {"unet": parts.unet}
    if train_text_encoder:
        parts.text_encoder.requires_grad_(True)
        modules["text_encoder"] = parts.text_encoder
    params = {f"{k}.{n}": p for k, m in modules.items() for n, p in m.named_parameters()}
    trainer = fit(modules, list(params.values()),
                  lambda ctx: dreambooth_loss(parts, instance_latents, instance_prompt, prior=prior,
                                              prior_loss_weight=prior_loss_weight, batch_size=batch_size,
                                              generator=ctx.generator, text_grad=train_text_encoder),
                  steps=steps, generator=generator, lr=lr, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
                  checkpoint_params=params, desc="dreambooth", **trainer_options)
    parts.freeze()
    return trainer.history


def save_pipeline(directory: str | Path, parts: Any) -> Path:
    """The fine-tuned model as a diffusers pipeline directory (step 5), as diffusers' example saves it."""
    from diffusers import LDMTextToImagePipeline, StableDiffusionPipeline

    if parts.family == "ldm":
        pipe = LDMTextToImagePipeline(vqvae=parts.vae, bert=parts.text_encoder, tokenizer=parts.tokenizer,
                                      unet=parts.unet, scheduler=parts.scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                       unet=parts.unet, scheduler=parts.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    d = Path(directory)
    pipe.save_pretrained(str(d), safe_serialization=True)
    return d
