"""Loading real checkpoints (and the tiny ones by name), and the :class:`Parts` helper.

Every pipeline gets its family's scheduler (LDM or SD v1.x, both on LDM's β schedule; see
:mod:`.base`, whose scheduler factory and errors are re-exported here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from anoplug.diffusion.base import LDM_BETAS, SchedulerKind, TokenizerError, WeightsNotFoundError, check_tokenizer, make_scheduler

__all__ = ["WeightsNotFoundError", "TokenizerError", "load_pipeline", "make_scheduler", "Parts", "LDM_BETAS",
           "check_tokenizer"]

Family = Literal["ldm", "sd"]
#: untrained tiny pipelines for tests: SD layout (CLIP) and LDM layout (LDM-BERT).
TINY_RANDOM = ("tiny-random", "tiny-random-ldm")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_pipeline(model_id_or_dir: str | Path, *, scheduler: SchedulerKind = "ddim", family: Family | None = None,
                  device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None,
                  local_files_only: bool | None = None, **kwargs: Any) -> Any:
    """Load a diffusers pipeline (hub id, local directory, ``"tiny-base"`` or ``"tiny-random[-ldm]"``).

    The scheduler is replaced by the family's DDIM/PNDM/DDPM/DPM with the LDM β schedule.

    ``local_files_only`` defaults to ``HF_HUB_OFFLINE``; when the weights are not on this
    machine, raises one :class:`WeightsNotFoundError` that says how to get them.
    """
    from diffusers import DiffusionPipeline

    name = str(model_id_or_dir)
    if name in ("tiny", "tiny-base"):
        from anoplug.diffusion.tiny import load_tiny_base

        pipe = load_tiny_base()
    elif name in TINY_RANDOM:
        from anoplug.diffusion import tiny

        pipe = tiny.tiny_ldm_pipeline() if name.endswith("-ldm") else tiny.tiny_sd_pipeline()
    else:
        local = Path(name).expanduser()
        if local_files_only is None:
            local_files_only = _offline()
        if local.exists() and not (local / "model_index.json").is_file():
            raise WeightsNotFoundError(f"{local} is not a diffusers pipeline directory (no model_index.json)")
        try:
            pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else name,
                                                     local_files_only=local_files_only or local.exists(),
                                                     torch_dtype=torch_dtype, **kwargs)
        except (OSError, ValueError) as e:
            raise WeightsNotFoundError(
                f"cannot load diffusion weights {name!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n"
                f"Get them on a machine with internet: `huggingface-cli download {name} --local-dir DIR` and pass DIR "
                "(or unset HF_HUB_OFFLINE to let diffusers download into its cache). "
                "Offline, use the bundled stand-in: 'tiny-base'.") from None
    if getattr(pipe, "tokenizer", None) is not None:
        check_tokenizer(pipe.tokenizer, f"tokenizer of {name}")
    fam = family or guess_family(pipe)
    pipe.scheduler = make_scheduler(scheduler)
    pipe.anoplug_family = fam
    pipe.set_progress_bar_config(disable=True)  # anoplug shows its own progress; no tqdm widgets in notebooks
    if hasattr(pipe, "safety_checker") and getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # industrial images; the checker also needs extra downloads
    return pipe.to(device)


def guess_family(pipe: Any) -> Family:
    return "ldm" if hasattr(pipe, "bert") else "sd"


@dataclass
class Parts:
    """The components of a latent text-to-image model, with the few operations methods need.

    Works for SD-layout pipelines (``vae``, ``text_encoder``) and LDM ones (``vqvae``, ``bert``).
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    family: Family = "sd"

    @classmethod
    def from_pipeline(cls, pipe: Any) -> Parts:
        if hasattr(pipe, "bert"):
            return cls(pipe.unet, pipe.vqvae, pipe.bert, pipe.tokenizer, pipe.scheduler, "ldm")
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, "sd")

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def freeze(self) -> Parts:
        """Turn off gradients of every weight (methods then train only their own tensors)."""
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)
            m.eval()
        return self

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        n = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77), 77)
        return self.tokenizer(prompts, padding="max_length", max_length=n, truncation=True,
                              return_tensors="pt").input_ids.to(self.device)

    def encode_text(self, prompts: list[str] | torch.Tensor) -> torch.Tensor:
        ids = prompts if isinstance(prompts, torch.Tensor) else self.tokenize(list(prompts))
        return self.text_encoder(ids)[0]

    def encode_image(self, image01: torch.Tensor) -> torch.Tensor:
        """Deterministic latents (posterior mean × scaling factor) of images in [0, 1]."""
        dist = self.vae.encode(image01.to(self.device) * 2 - 1).latent_dist
        return dist.mean * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode(latents / self.scaling_factor).sample
        return ((x + 1) / 2).clamp(0, 1)
