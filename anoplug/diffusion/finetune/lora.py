"""LoRA fine-tuning of the UNet's and the text encoder's attention, with ``peft``, in diffusers' format.

**Not faithful to any method here** (spec §14 item 7): the originals that fine-tune (SeaS,
Anodapter, DreamBooth-style methods) update full weights. LoRA is offered as a memory-saving
option for real checkpoints on small GPUs; results obtained with it are not the paper's.

Defaults follow diffusers' ``train_text_to_image_lora.py`` / ``train_dreambooth_lora.py``:

1. freeze every base weight; add LoRA (``peft.LoraConfig``: rank 4, ``lora_alpha`` = rank,
   Gaussian init of A, zero B, so the adapted model starts equal to the base) on the UNet's
   attention projections ``to_q, to_k, to_v, to_out.0`` (``unet.add_adapter``) and,
   optionally, on the CLIP text encoder's ``q_proj, k_proj, v_proj, out_proj``
   (``peft.inject_adapter_in_model``: transformers' own ``add_adapter`` asks for a newer peft
   than this environment has, and injects the same layers);
2. each step: a batch of (latent, caption) items, the shared noise-prediction loss
   (:func:`.common.noise_prediction_loss`), gradients only into the LoRA matrices;
3. AdamW (lr 1e-4, weight decay 1e-2), gradient norm clipped at 1, on :class:`anoplug.train.Trainer`;
4. :func:`save_lora` writes ``pytorch_lora_weights.safetensors`` through
   ``StableDiffusionPipeline.save_lora_weights`` (peft state dict → diffusers keys, with the
   LoRA configs as metadata so an ``alpha`` other than the rank survives), which diffusers'
   own ``pipe.load_lora_weights(directory)`` loads into a plain pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from anoplug.diffusion.finetune.common import (
    ADAM_WEIGHT_DECAY,
    MAX_GRAD_NORM,
    draw_indices,
    encode_prompts,
    fit,
    noise_prediction_loss,
)

__all__ = ["UNET_TARGETS", "TEXT_ENCODER_TARGETS", "RANK", "LEARNING_RATE", "lora_config", "add_lora", "lora_parameters",
           "has_lora", "parameter_counts", "lora_loss", "train_lora", "save_lora", "WEIGHT_NAME"]

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
RANK = 4
LEARNING_RATE = 1e-4
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default file name


def lora_config(targets: Sequence[str], rank: int = RANK, alpha: float | None = None) -> Any:
    """diffusers' example configuration: ``r = lora_alpha = rank``, Gaussian init."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights="gaussian",
                      target_modules=list(targets))


def has_lora(module: nn.Module) -> bool:
    return any("lora_" in n for n, _ in module.named_parameters())


def add_lora(parts: Any, *, rank: int = RANK, alpha: float | None = None, unet: bool = True,
             text_encoder: bool = False) -> dict[str, Any]:
    """Freeze ``parts`` and add LoRA layers (step 1); return the config per adapted component.

    The configs are also kept on the module as ``anoplug_lora_config`` (what :func:`save_lora`
    writes as metadata).
    """
    from peft import inject_adapter_in_model

    parts.freeze()
    configs: dict[str, Any] = {}
    if unet:
        cfg = lora_config(UNET_TARGETS, rank, alpha)
        parts.unet.add_adapter(cfg)
        parts.unet.anoplug_lora_config = configs["unet"] = cfg
    if text_encoder:
        cfg = lora_config(TEXT_ENCODER_TARGETS, rank, alpha)
        inject_adapter_in_model(cfg, parts.text_encoder)
        parts.text_encoder.anoplug_lora_config = configs["text_encoder"] = cfg
    for m in (parts.unet, parts.text_encoder):
        for n, p in m.named_parameters():
            p.requires_grad_("lora_" in n)
    return configs


def lora_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA matrices of ``module`` by name (what trains; everything else stays frozen)."""
    return {n: p for n, p in module.named_parameters() if "lora_" in n}


def parameter_counts(parts: Any) -> dict[str, int]:
    """Trainable LoRA parameters vs the full UNet + text encoder (LoRA layers excluded from ``full``)."""
    lora = sum(p.numel() for m in (parts.unet, parts.text_encoder) for p in lora_parameters(m).values())
    full = sum(p.numel() for m in (parts.unet, parts.text_encoder) for n, p in m.named_parameters() if "lora_" not in n)
    unet = sum(p.numel() for n, p in parts.unet.named_parameters() if "lora_" not in n)
    return {"lora": lora, "full_unet_and_text_encoder": full, "full_unet": unet}


def lora_loss(parts: Any, latents: torch.Tensor, prompts: Sequence[str], *, batch_size: int,
              generator: torch.Generator, text_grad: bool) -> torch.Tensor:
    """One step (step 2): draws the items, then (inside the loss) the timesteps and the noise."""
    if len(prompts) != len(latents):
        raise ValueError(f"need one prompt per latent, got {len(prompts)} for {len(latents)}")
    idx = draw_indices(len(latents), batch_size, generator)
    caps = [prompts[int(i)] for i in idx]
    return noise_prediction_loss(parts.unet, parts.scheduler, latents[idx],
                                 lambda: encode_prompts(parts, caps, grad=text_grad), generator=generator)


def train_lora(parts: Any, latents: torch.Tensor, prompts: Sequence[str], *, steps: int, generator: torch.Generator,
               batch_size: int = 1, lr: float = LEARNING_RATE, rank: int = RANK, alpha: float | None = None,
               text_encoder: bool = False, weight_decay: float = ADAM_WEIGHT_DECAY,
               clip_grad_norm: float | None = MAX_GRAD_NORM, **trainer_options: Any) -> list[dict]:
    """Add LoRA (unless ``parts`` already has it) and train it for ``steps`` updates; return the history.

    ``latents`` are the items' VAE latents (:func:`.common.encode_latents`), ``prompts`` one
    caption per item. ``trainer_options`` go to :func:`.common.fit` (checkpoints, resume,
    accumulation, mixed precision, progress).
    """
    want_unet, want_te = not has_lora(parts.unet), text_encoder and not has_lora(parts.text_encoder)
    if want_unet or want_te:
        add_lora(parts, rank=rank, alpha=alpha, unet=want_unet, text_encoder=want_te)
    te = has_lora(parts.text_encoder)
    modules = {"unet": parts.unet, **({"text_encoder": parts.text_encoder} if te else {})}
    params = {f"{k}.{n}": p for k, m in modules.items() for n, p in lora_parameters(m).items()}
    trainer = fit(modules, list(params.values()),
                  lambda ctx: lora_loss(parts, latents, prompts, batch_size=batch_size, generator=ctx.generator,
                                        text_grad=te),
                  steps=steps, generator=generator, lr=lr, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
                  checkpoint_params=params, desc="lora", **trainer_options)
    return trainer.history


def save_lora(directory: str | Path, parts: Any) -> Path:
    """Write the LoRA layers in diffusers' format (step 4); ``pipe.load_lora_weights(directory)`` reads them."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    if not has_lora(parts.unet) and not has_lora(parts.text_encoder):
        raise ValueError("these parts carry no LoRA layers (add_lora / train_lora first)")
    layers: dict[str, Any] = {}
    for name, module in (("unet", parts.unet), ("text_encoder", parts.text_encoder)):
        if has_lora(module):
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
            layers[f"{name}_lora_adapter_metadata"] = module.anoplug_lora_config.to_dict()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(d), weight_name=WEIGHT_NAME, safe_serialization=True, **layers)
    return d / WEIGHT_NAME
