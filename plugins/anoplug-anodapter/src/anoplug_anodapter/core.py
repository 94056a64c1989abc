"""The pieces of Anodapter that need no generator object: prompts, type tokens, mask-image pixels, the joint loss.

Kept apart from :mod:`.method` so the mechanism tests can call each piece alone:

- :func:`assign_type_tokens` — one rare token per anomaly type (step 1 of the method);
- :func:`mask_to_vae_input` / :func:`binarise_mask_image` — how a mask *image* enters the
  VAE in training and how a generated one is turned back into a binary mask (> 200 of 255);
- :func:`joint_loss` — one batch of [anomaly images; mask images] through the one UNet, with
  the two adapters' residuals concatenated along the batch, loss = ε-MSE(image) + ε-MSE(mask).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from anoplug.diffusion.finetune.common import noise_prediction_loss

__all__ = ["TYPE_TOKENS", "IMAGE_PROMPT", "MASK_PROMPT", "assign_type_tokens", "mask_prompt", "mask_to_vae_input",
           "binarise_mask_image", "adapter_residuals", "joint_loss"]

#: official code: ``prompt_list.json``, the rare tokens handed to the anomaly types in turn.
TYPE_TOKENS: tuple[str, ...] = ("vfx", "frt", "plk", "brm", "xtr", "djn", "mnp", "zfg")
#: official code: ``--instance_prompt`` (anomaly images, any type) and ``--mask_prompt`` (mask images).
IMAGE_PROMPT = "a photo of dqd"
MASK_PROMPT = "a photo of sks"


def assign_type_tokens(types: Sequence[str], tokens: Sequence[str] = TYPE_TOKENS) -> dict[str, str]:
    """Type name → rare token, handed out in *sorted* type order (token ``i mod len(tokens)``).

    The official code hands them out in ``os.listdir`` order, so the same data can bind
    "crack" to another token on another file system; sorting makes the binding a function of
    the type names alone (*our assumption*; the modulo wrap-around is the official code's).
    """
    names = sorted({str(t) for t in types})
    if not names:
        raise ValueError("no anomaly types to assign tokens to")
    return {t: tokens[i % len(tokens)] for i, t in enumerate(names)}


def mask_prompt(type_token: str | None) -> str:
    """"a photo of sks with vfx" for an anomaly type; "a photo of sks" for a normal image's black mask."""
    return MASK_PROMPT if type_token is None else MASK_PROMPT.replace("sks", f"sks with {type_token}")


def mask_to_vae_input(mask: torch.Tensor) -> torch.Tensor:
    """A {0,1} mask as the [0, 1] *image* that :meth:`Parts.encode_image` maps to the VAE's input.

    The official dataset feeds mask images to the VAE as ``ToTensor`` values in [0, 1] — not
    normalised to [-1, 1] as the anomaly images are — so black is the VAE's mid-grey and white
    its white. ``Parts.encode_image`` applies ``2x − 1``; this returns ``(m + 1) / 2`` so the VAE
    sees ``m`` exactly. Decoded (``x/2 + 0.5``), a black mask comes back at grey ≈ 128 and a
    white one at ≈ 255, which is why the official threshold of 200 separates them.
    """
    return (mask.float().expand(-1, 3, -1, -1) + 1) / 2


def binarise_mask_image(image01: torch.Tensor, threshold: float = 200.0) -> torch.Tensor:
    """A generated mask image (``[B,3,H,W]`` in [0, 1]) → ``[B,1,H,W]`` in {0, 1}: grey mean of the uint8 image > 200.

    As the official sampler: the pipeline's PIL output (``round(255·x)``), the mean over RGB,
    strictly greater than ``threshold``.
    """
    u8 = (image01.clamp(0, 1) * 255).round()
    return (u8.mean(1, keepdim=True) > threshold).float()


def adapter_residuals(image_adapter: Any, mask_adapter: Any, anomaly_mask: torch.Tensor,
                      object_mask: torch.Tensor) -> list[torch.Tensor]:
    """Per UNet level: ``cat([image_adapter(anomaly mask), mask_adapter(object mask)])`` along the batch.

    The training batch is [anomaly images; mask images], so the first half gets the image
    adapter's features and the second half the mask adapter's (official code L1617–1630).
    """
    a = image_adapter(anomaly_mask)
    b = mask_adapter(object_mask)
    return [torch.cat([x, y]) for x, y in zip(a, b)]


def joint_loss(unet: Any, scheduler: Any, image_latents: torch.Tensor, mask_latents: torch.Tensor,
               residuals: Callable[[], list[torch.Tensor]], text: Callable[[], torch.Tensor], *,
               generator: torch.Generator, mask_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Loss = MSE(ε̂_image, ε) + MSE(ε̂_mask, ε) over one UNet pass of the 2B batch (official L1670–1680).

    ``residuals()`` gives the concatenated adapter features (:func:`adapter_residuals`),
    ``text()`` the text states of ``[image prompts; mask prompts]``; both are computed after
    the timestep and noise draws. ``mask_weight`` is 1 in the original (the two terms are
    summed); setting it to 0 removes the mask term, which the mechanism tests use.
    """
    b = len(image_latents)
    feats: list[torch.Tensor] = []

    def model(x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        feats[:] = residuals()
        return unet(x_t, t, encoder_hidden_states=encoder_hidden_states,
                    down_intrablock_additional_residuals=list(feats)).sample

    per = noise_prediction_loss(model, scheduler, torch.cat([image_latents, mask_latents]), text,
                                generator=generator, reduction="none")
    image, mask = per[:b].mean(), per[b:].mean()
    return {"loss": image + mask_weight * mask, "image_loss": image.detach(), "mask_loss": mask.detach()}
