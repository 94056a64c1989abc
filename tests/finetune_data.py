"""Shared by the fine-tuning tests: data the tiny base has never seen, and a private copy of its trainable parts."""

from __future__ import annotations

import copy
from typing import Any

import torch


def checkerboard(n: int = 2) -> torch.Tensor:
    """Red/blue 8-px squares at 64 px (and its mirror): far from the toy images, so there is something to learn."""
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    c = (((yy // 8) + (xx // 8)) % 2).float()
    img = torch.stack([c, torch.full_like(c, 0.2), 1 - c])[None]
    return torch.cat([img, img.flip(-1)])[:n]


def fresh_parts(pipe: Any) -> Any:
    """Parts with their own UNet and text encoder (the pipeline's stay the untouched base), frozen."""
    from anoplug.diffusion.loading import Parts

    p = Parts.from_pipeline(pipe)
    return Parts(copy.deepcopy(p.unet), p.vae, copy.deepcopy(p.text_encoder), p.tokenizer, p.scheduler).freeze()
