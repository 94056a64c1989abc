"""Anomagic's trained parts around a frozen base: the masked visual prompt, the image tokens, IP-Adapter and LoRA.

Paper step 1 (visual prompt) and step 2 (conditioning) of :mod:`anoplug_anomagic.method`:

- :class:`MaskedSelfAttention`: the SAGAN-style block of the official ``SelfAttention``: 1×1 convs
  q, k (C → C/8) and v (C → C) over the image encoder's patch grid; every *key* outside the
  reference anomaly mask gets a −1e6 logit, so each position attends only to defect positions;
  a learned γ (initialised 0) scales the attended values added to the input; a final
  ``Linear(C → projection_dim)``.
- :func:`image_tokens`: the IP-Adapter ``ImageProjModel`` (Linear → 4 × context width, LayerNorm),
  applied to *every* grid token and reshaped per batch, so P grid tokens give 4·P image tokens
  (256 → 1,024 in the paper's ViT-H setting; 64 → 256 with the tiny CLIP here).
- :func:`pooled_text`: the caption's text-encoder states mean-pooled over *all* positions
  (padding included) into one token.
- :func:`install_adapters`: the toolkit's IP-Adapter processors (``to_k_ip``/``to_v_ip`` initialised
  from ``to_k``/``to_v``, ``num_tokens = 4``) first, then LoRA (peft, r = α = 16, Gaussian init) on
  ``to_q/to_k/to_v/to_out.0`` of every UNet attention layer, the order of ``Anomagic_train.py``.

**The last-4-tokens quirk (reproduced).** The IP processors keep ``num_tokens = 4``: only the
last 4 of the 4·P image tokens go through ``to_k_ip/to_v_ip``; the text token and the other
4·P − 4 image tokens are ordinary cross-attention context, adapted by LoRA. The released
checkpoint depends on this split, so it is kept (``num_ip_tokens`` can change it, off-paper).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MaskedSelfAttention", "LoraLayers", "image_tokens", "pooled_text", "grid_tokens", "install_adapters",
           "NEG_LOGIT"]

#: the logit offset of a key outside the reference mask (official: ``scores - (1 - mask) * 1e6``)
NEG_LOGIT = 1e6


class MaskedSelfAttention(nn.Module):
    """Self-attention over the encoder's patch grid whose keys are restricted to the reference anomaly mask.

    Why: the reference is an anomaly of *another* product; only its defect region should shape
    the prompt, not the product around it. With γ = 0 (its initial value) the block passes the
    features through unchanged, so training starts from the plain encoder features.
    """

    def __init__(self, channels: int, out_dim: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.proj_out = nn.Linear(channels, out_dim)
        self.last_weights: torch.Tensor | None = None  # [B, P, P] attention of the latest call (for tests/plots)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens [B, P, C]`` (P a square), ``mask [B, 1, h, w]`` in {0, 1} (nearest-resized to the grid)."""
        b, p, c = tokens.shape
        side = int(round(p ** 0.5))
        if side * side != p:
            raise ValueError(f"{p} tokens do not form a square grid")
        x = tokens.transpose(1, 2).reshape(b, c, side, side)
        q = self.query(x).flatten(2).transpose(1, 2)  # [B, P, C/8]
        k = self.key(x).flatten(2)  # [B, C/8, P]
        v = self.value(x).flatten(2)  # [B, C, P]
        scores = torch.bmm(q, k)  # [B, P(query), P(key)]
        if mask is not None:
            m = F.interpolate(mask.float(), size=(side, side), mode="nearest").reshape(b, 1, p)
            scores = scores - (1 - m) * NEG_LOGIT
        weights = scores.softmax(-1)
        self.last_weights = weights.detach()
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, side, side)
        out = self.gamma * out + x
        return self.proj_out(out.flatten(2).transpose(1, 2))


def grid_tokens(encoder: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The first P of the image encoder's P + 1 last-hidden-state tokens (official ``[:, :256]``).

    CLIP puts the class token *first*, so this keeps the class token and drops the last patch:
    the "grid" is shifted by one position. The official code does exactly this; reproduced.
    """
    hidden = encoder(pixel_values=pixel_values).last_hidden_state
    return hidden[:, : hidden.shape[1] - 1]


def image_tokens(image_proj: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``ImageProjModel`` on every grid token: ``[B, P, D] → [B, 4·P, context width]`` (reshape per batch).

    ``image_proj`` is the toolkit's (diffusers') ``ImageProjection``: ``image_embeds`` (Linear
    D → N·W) and ``norm`` (LayerNorm W); its own forward reshapes to N tokens, which is not what
    the official model does with a token sequence, so the two layers are applied here.
    """
    lin, norm = image_proj.image_embeds, image_proj.norm
    width = norm.normalized_shape[0]
    return norm(lin(features).reshape(features.shape[0], -1, width))


def pooled_text(parts: Any, prompts: list[str]) -> torch.Tensor:
    """One text token per prompt: the mean of all ``model_max_length`` states, padding included (official)."""
    return parts.encode_text(list(prompts)).mean(1, keepdim=True)


class LoraLayers(nn.Module):
    """A view of the UNet's peft LoRA matrices as one module (what ``save``/checkpoints persist).

    The ``lora_A``/``lora_B`` containers are shared with the UNet, so loading into this module
    loads into the UNet; the 4.2 M base weights are never written.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        for name, mod in unet.named_modules():
            if hasattr(mod, "lora_A") and isinstance(mod.lora_A, nn.ModuleDict):
                key = name.replace(".", "__")
                self.layers[key + "__A"] = mod.lora_A
                self.layers[key + "__B"] = mod.lora_B


def install_adapters(parts: Any, *, image_embed_dim: int, num_ip_tokens: int, rank: int, alpha: float,
                     ip_scale: float, seed: int) -> tuple[Any, Any, LoraLayers]:
    """A private copy of the base parts with IP-Adapter processors, then LoRA, on its UNet.

    Returns ``(parts, ip_adapter, lora_layers)``. The copy keeps the shared base model (cached
    once per process) untouched. Order as in ``Anomagic_train.py``: IP processors first (their
    ``to_k_ip``/``to_v_ip`` start as copies of the plain ``to_k``/``to_v``), LoRA second.
    """
    from anoplug.diffusion.finetune.ip_adapter import install_ip_adapter
    from anoplug.diffusion.finetune.lora import add_lora
    from anoplug.diffusion.loading import Parts

    mine = Parts(copy.deepcopy(parts.unet), parts.vae, parts.text_encoder, parts.tokenizer, parts.scheduler,
                 parts.family)
    mine.unet.requires_grad_(False)
    adapter = install_ip_adapter(mine.unet, image_embed_dim=image_embed_dim, num_tokens=num_ip_tokens,
                                 scale=ip_scale, seed=seed)
    from anoplug.diffusion.tiny import seeded

    with seeded(seed + 1):  # peft's Gaussian init of lora_A draws from the global RNG: fork it
        add_lora(mine, rank=rank, alpha=alpha, unet=True, text_encoder=False)
    adapter.requires_grad_(True)
    return mine, adapter, LoraLayers(mine.unet)
