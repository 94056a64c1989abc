"""Prompt-guided anomaly refinement's image–text loss, on an injected ``transformers.CLIPModel``.

The official code loads OpenAI's ``clip`` ViT-L/14 inside the pipeline call (a download at run
time) and scores the decoded latent with ``1 − logits_per_image / 100`` after a bicubic resize to
224 px and CLIP's normalisation. OpenAI CLIP's logit scale is exactly 100, so that loss is
``1 − cos(image, text)``; we write it as the cosine so that a CLIP with another learned
temperature (the committed tiny one: 15.9) gets the same loss (*our assumption*, identical for
ViT-L/14). The model is injected: ``"tiny"`` is ``anoplug/assets/tiny_clip``, anything else a
local folder written by ``CLIPModel.save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ClipJudge", "load_judge"]

_CACHE: dict[str, Any] = {}


class ClipJudge:
    """``distance(images, texts) -> [B]``: ``1 − cos`` between CLIP embeddings, differentiable in the images."""

    def __init__(self, model: Any, tokenizer: Any, preprocess: Any) -> None:
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.size = int(model.config.vision_config.image_size)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        from anoplug.zoo.clip import encode_texts

        return encode_texts(self.model, self.tokenizer, list(texts))

    def image_features(self, images01: torch.Tensor) -> torch.Tensor:
        """Bicubic resize of the whole image to CLIP's input size (official: to 224, no crop), CLIP mean/std."""
        from anoplug.zoo.clip import encode_images

        x = F.interpolate(images01.float(), size=(self.size, self.size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.preprocess.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std, device=x.device).view(1, 3, 1, 1)
        return encode_images(self.model, (x - mean) / std)

    def distance(self, images01: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return 1.0 - (self.image_features(images01) * text_features.to(images01.device)).sum(-1)

    def to(self, device: torch.device | str) -> ClipJudge:
        self.model.to(device)
        return self


def load_judge(name: str = "tiny", device: torch.device | str = "cpu") -> ClipJudge:
    """The CLIP judge ``name`` (``"tiny"`` or a local ``CLIPModel`` folder), loaded once per process."""
    if name not in _CACHE:
        from anoplug.zoo.clip import load_clip

        _CACHE[name] = ClipJudge(*load_clip(name))
    return _CACHE[name].to(device)
