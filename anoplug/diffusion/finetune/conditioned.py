"""What the three conditioning fine-tunes (ControlNet, T2I-Adapter, IP-Adapter) share besides :mod:`.common`.

All three train a small network beside a *frozen* latent diffusion model on
(image, caption, condition) triples with the model's own denoising objective
(:func:`.common.noise_prediction_loss`). The frozen parts never change, so their outputs are
computed once: :func:`encode_pairs` keeps the VAE latents and the text-encoder states of the
training items (and of the empty prompt, for condition dropout and AdaBLDM's ControlNet
branch) next to each item's condition, and a step runs only the UNet and the trained network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from anoplug.diffusion.finetune.common import draw_indices, encode_latents, encode_prompts

__all__ = ["ConditionedLatents", "encode_pairs", "repeat_rows", "trainable", "save_pretrained", "load_pretrained"]


@dataclass
class ConditionedLatents:
    """Training triples with the frozen encodings precomputed.

    ``condition`` is per item: a hint image ``[N,C,H,W]`` in [0, 1] at pixel size (ControlNet,
    T2I-Adapter) or an image embedding ``[N,D]`` (IP-Adapter). ``empty_text`` ``[1,L,D]`` is the
    empty prompt's encoding.
    """

    latents: torch.Tensor
    text: torch.Tensor
    condition: torch.Tensor
    empty_text: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.latents)
        if n == 0 or len(self.text) != n or len(self.condition) != n:
            raise ValueError(f"need as many texts and conditions as latents, got {len(self.text)} texts and "
                             f"{len(self.condition)} conditions for {n} latents")

    def __len__(self) -> int:
        return len(self.latents)

    def to(self, device: torch.device | str) -> ConditionedLatents:
        return replace(self, latents=self.latents.to(device), text=self.text.to(device),
                       condition=self.condition.to(device), empty_text=self.empty_text.to(device))

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A step's item indices (on the data's device), the first draw of every step."""
        return draw_indices(len(self), batch_size, generator).to(self.latents.device)


@torch.no_grad()
def encode_pairs(parts: Any, images: torch.Tensor, prompts: Sequence[str], condition: torch.Tensor) -> ConditionedLatents:
    """Encode ``images`` (``[N,3,H,W]`` in [0, 1]) and ``prompts`` once with the frozen VAE and text encoder."""
    if len(prompts) != len(images):
        raise ValueError(f"need one prompt per image, got {len(prompts)} for {len(images)}")
    latents = encode_latents(parts, images)
    unique = list(dict.fromkeys(prompts))
    states = encode_prompts(parts, unique, grad=False)
    text = states[torch.tensor([unique.index(p) for p in prompts], device=states.device)]
    return ConditionedLatents(latents=latents, text=text, condition=condition.to(latents.device),
                              empty_text=encode_prompts(parts, [""], grad=False))


def repeat_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` with ``n`` rows: a batch of ``n / k`` repeated ``k`` times (both halves of a guidance batch, say)."""
    if len(x) == n:
        return x
    if len(x) == 0 or n % len(x):
        raise ValueError(f"cannot match a batch of {len(x)} to {n} rows")
    return x.repeat(n // len(x), *([1] * (x.ndim - 1)))


def trainable(module: nn.Module, prefix: str) -> dict[str, nn.Parameter]:
    """``prefix.name -> parameter`` of ``module``'s trainable weights: what the optimiser and checkpoints hold."""
    params = {f"{prefix}.{n}": p for n, p in module.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"{prefix} has no trainable parameters")
    return params


def save_pretrained(model: Any, directory: str | Path) -> Path:
    """A diffusers model's ``save_pretrained`` directory (config + safetensors)."""
    d = Path(directory)
    model.save_pretrained(str(d), safe_serialization=True)
    return d


def load_pretrained(class_name: str, directory: str | Path, device: str | torch.device = "cpu") -> Any:
    """``diffusers.<class_name>.from_pretrained`` on a local directory, with the hub switched off."""
    import diffusers

    from anoplug.diffusion.base import hub_offline

    with hub_offline():
        model = getattr(diffusers, class_name).from_pretrained(str(directory), local_files_only=True)
    return model.to(device).eval()
