"""Semantic Guided Adapter (SGA, paper step 3): the cross-modal vector enters the inpainting UNet as 4 extra tokens.

Official (``train_anoctrl.py``, ``sg_adapter/sg_adapter.py``): the averaged Q-Former vector
(768) → ``BlipProjModel`` (one Linear, 768 → 1024, the CLIP-H ``projection_dim``) →
``ImageProjModel`` (Linear 1024 → 4 × 768, LayerNorm 768) → 4 tokens appended to the caption's
text states; every cross-attention layer gets IP-Adapter's decoupled branch ``to_k_ip/to_v_ip``
(copied from ``to_k/to_v``) added with ``scale`` (**0.5** in training, **1.0** at inference).
The unconditional branch of CFG uses ``proj(zeros)``, not zero tokens.

The decoupled processors and the ``ImageProjModel`` are the host's IP-Adapter toolkit
(:mod:`anoplug.diffusion.finetune.ip_adapter`: diffusers' ``ImageProjection`` is exactly Linear +
LayerNorm to N tokens); this module adds only ``BlipProjModel`` in front of it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

__all__ = ["SGA", "install_sga", "NUM_TOKENS", "TRAIN_SCALE", "INFERENCE_SCALE"]

NUM_TOKENS = 4  # official clip_extra_context_tokens
TRAIN_SCALE = 0.5  # official cross_attention_kwargs={"scale": 0.5} in SGAdapter.forward
INFERENCE_SCALE = 1.0  # official inference_fast.py scale


class SGA(nn.Module):
    """``blip_proj`` (Linear hidden → D) and the host :class:`~anoplug.diffusion.finetune.ip_adapter.IPAdapter`."""

    def __init__(self, blip_proj: nn.Linear, adapter: Any) -> None:
        super().__init__()
        self.blip_proj = blip_proj
        self.adapter = adapter

    def tokens(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, H]`` cross-modal vectors → ``[B, 4, context width]`` SG tokens."""
        return self.adapter.tokens(self.blip_proj(pooled))

    def context(self, text: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The UNet context: caption states followed by the 4 SG tokens (the processors split the last 4 off)."""
        return torch.cat([text, self.tokens(pooled).to(text.dtype)], 1)

    def set_scale(self, scale: float) -> None:
        self.adapter.set_scale(scale)


def install_sga(unet: Any, *, qformer_hidden: int, proj_dim: int, seed: int) -> tuple[Any, SGA]:
    """A private frozen copy of ``unet`` with the decoupled processors installed, and the trainable SGA.

    The copy keeps the shared base (cached once per process) untouched.
    """
    from anoplug.diffusion.finetune.ip_adapter import install_ip_adapter
    from anoplug.diffusion.tiny import seeded

    mine = copy.deepcopy(unet).requires_grad_(False)
    adapter = install_ip_adapter(mine, image_embed_dim=proj_dim, num_tokens=NUM_TOKENS, scale=TRAIN_SCALE, seed=seed)
    with seeded(seed + 1):
        blip_proj = nn.Linear(qformer_hidden, proj_dim)
    sga = SGA(blip_proj, adapter).requires_grad_(True)
    return mine, sga
