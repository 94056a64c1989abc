"""The bottom of :mod:`anoplug.diffusion`: noise schedule, scheduler factory, and the checks on weights.

Both :mod:`.loading` (real checkpoints, tiny ones by name) and :mod:`.tiny` (builds the tiny
pipelines) use these; this module imports nothing else from the package, so neither of those
two has to import the other back.

Two families matter for the seed methods (spec ``diffusion.md`` §2.5):

- **LDM** (``CompVis/ldm-text2im-large-256``: LDM-BERT text encoder, KL-f8 VAE, 256 px),
  used by AnomalyDiffusion and AnoGen;
- **SD** v1.x (CLIP text encoder, 512 px), used by most others.

Both use LDM's "linear" schedule, which is ``linspace(sqrt(0.00085), sqrt(0.012))**2`` —
diffusers' ``scaled_linear``, *not* its ``linear`` — and DDIM with uniform timesteps plus an
offset of one (``leading``, ``steps_offset=1``, ``set_alpha_to_one=False``, no clipping).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

__all__ = ["LDM_BETAS", "LDM_DDIM", "SchedulerKind", "make_scheduler", "WeightsNotFoundError", "TokenizerError",
           "check_tokenizer", "ALLOW_DOWNLOAD_ENV", "downloads_allowed", "hub_offline"]

#: the opt-in for hub downloads (``ANOPLUG_ALLOW_DOWNLOAD=1``); without it nothing is fetched.
ALLOW_DOWNLOAD_ENV = "ANOPLUG_ALLOW_DOWNLOAD"

#: β schedule shared by LDM txt2img and Stable Diffusion v1.x.
LDM_BETAS: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                             "num_train_timesteps": 1000}
#: DDIM timestep layout of the CompVis code: [1, 6, ..., 996] for 200 steps.
LDM_DDIM: dict[str, Any] = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False,
                            "clip_sample": False}

SchedulerKind = Literal["ddim", "pndm", "ddpm", "dpm"]


class WeightsNotFoundError(FileNotFoundError):
    """The requested checkpoint is not on this machine (and may not be downloaded)."""


class TokenizerError(ValueError):
    """A tokenizer is unusable (e.g. the 2-token stub transformers returns offline)."""


def downloads_allowed() -> bool:
    """Whether the user opted in to hub downloads (``ANOPLUG_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def hub_offline(offline: bool = True) -> Iterator[None]:
    """Within: huggingface_hub, and diffusers / transformers through it, open no connection.

    ``HF_HUB_OFFLINE`` is read once, when ``huggingface_hub`` is imported; this switches the
    flag it became (``huggingface_hub.constants.HF_HUB_OFFLINE``) on for the block. It also
    stops the requests that ``local_files_only=True`` alone still makes (building the
    user-agent header fetches a registry from the hub). ``offline=False`` changes nothing.
    The flag is process-wide: a download another thread runs at the same time is blocked too.
    """
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def make_scheduler(kind: SchedulerKind = "ddim", **overrides: Any) -> Any:
    """A scheduler with the LDM/SD β schedule and the CompVis DDIM timestep layout."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    cfg = {**LDM_BETAS, "prediction_type": "epsilon"}
    if kind == "ddim":
        return DDIMScheduler(**{**cfg, **LDM_DDIM, **overrides})
    if kind == "pndm":
        return PNDMScheduler(**{**cfg, "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False, **overrides})
    if kind == "ddpm":
        return DDPMScheduler(**{**cfg, "clip_sample": False, **overrides})
    if kind == "dpm":
        return DPMSolverMultistepScheduler(**{**cfg, **overrides})
    raise ValueError(f"unknown scheduler kind {kind!r}; use ddim, pndm, ddpm or dpm")


def check_tokenizer(tokenizer: Any, where: str = "tokenizer", *, fix: str = "") -> None:
    """Refuse the useless tokenizer that ``from_pretrained`` returns when the vocabulary files are missing.

    Offline, ``CLIPTokenizer.from_pretrained(<hub id or directory without vocab.json>)`` does
    not fail: it returns a 2-token stub. ``fix`` replaces the generic advice in the error.
    """
    n = len(tokenizer)
    if n < 100:
        fix = fix or ("pass a directory holding the complete model (for a hub id, "
                      f"{ALLOW_DOWNLOAD_ENV}=1 lets it be downloaded)")
        raise TokenizerError(f"{where} has only {n} tokens: its vocabulary files were not found (transformers "
                             f"returns a stub instead of failing); {fix}")
