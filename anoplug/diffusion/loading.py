"""Loading real checkpoints (and the tiny ones by name), and the :class:`Parts` helper.

Every pipeline gets its family's scheduler (LDM or SD v1.x, both on LDM's β schedule; see
:mod:`.base`, whose scheduler factory and errors are re-exported here).

**Offline by default.** :func:`load_pipeline` never touches the network unless the user opts
in: a hub id (``"CompVis/ldm-text2im-large-256"``) is looked up in the local Hugging Face
cache only, with the hub switched off for the call (``local_files_only=True`` and
``huggingface_hub``'s offline flag, whatever ``HF_HUB_OFFLINE`` says), so a saved generator
whose ``config.json`` names a hub model cannot start a download or even a DNS lookup. When the
weights are not here, one :class:`WeightsNotFoundError` names the model and the opt-in:

- ``ANOPLUG_ALLOW_DOWNLOAD=1`` in the environment (or ``allow_download=True`` in Python) lets
  diffusers download into its cache; ``HF_HUB_OFFLINE=1``, if also set, still wins;
- or fetch the weights on a connected machine (``huggingface-cli download ID --local-dir DIR``)
  and pass ``DIR``: a local directory is always read without the hub.

A tokenizer that transformers silently replaces with a 2-token stub (what a missing
vocabulary gives offline) is refused with :class:`TokenizerError`.

**Inpainting.** A directory in the ``StableDiffusionInpaintPipeline`` layout (an SD-inpainting
checkpoint: 9-channel UNet) loads through the same call and comes back as that class.
``"tiny-inpaint"`` is its offline stand-in: :func:`load_tiny_inpaint` assembles it from
``assets/tiny_inpaint`` (the 9-channel UNet and scheduler) and the tiny base's VAE, text
encoder and tokenizer, which it was trained on and does not copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from anoplug.diffusion.base import (
    ALLOW_DOWNLOAD_ENV,
    LDM_BETAS,
    SchedulerKind,
    TokenizerError,
    WeightsNotFoundError,
    check_tokenizer,
    downloads_allowed,
    hub_offline,
    make_scheduler,
)

__all__ = ["WeightsNotFoundError", "TokenizerError", "load_pipeline", "load_tiny_inpaint", "make_scheduler", "Parts",
           "LDM_BETAS", "check_tokenizer", "ALLOW_DOWNLOAD_ENV", "downloads_allowed", "hub_offline", "TINY_INPAINT",
           "TINY_INPAINT_DIR", "INPAINT_IN_CHANNELS"]

Family = Literal["ldm", "sd"]
#: untrained tiny pipelines for tests: SD layout (CLIP) and LDM layout (LDM-BERT).
TINY_RANDOM = ("tiny-random", "tiny-random-ldm")
#: the trained tiny inpainting base (``tools/train_tiny_inpaint.py``), and where its own files live.
TINY_INPAINT = "tiny-inpaint"
TINY_INPAINT_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_inpaint"
#: SD-inpainting's UNet input: noisy latent (4) + down-sampled mask (1) + masked-image latent (4).
INPAINT_IN_CHANNELS = 9


def load_pipeline(model_id_or_dir: str | Path, *, scheduler: SchedulerKind = "ddim", family: Family | None = None,
                  device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None,
                  allow_download: bool | None = None, **kwargs: Any) -> Any:
    """Load a diffusers pipeline (hub id, local directory, ``"tiny-base"``, ``"tiny-inpaint"`` or ``"tiny-random[-ldm]"``).

    The scheduler is replaced by the family's DDIM/PNDM/DDPM/DPM with the LDM β schedule.

    Offline unless ``allow_download`` (default: ``ANOPLUG_ALLOW_DOWNLOAD=1``; an explicit
    ``local_files_only=False`` counts as opting in too): a hub id is then read from the local
    cache only, with no connection attempted. Weights that are not on this machine raise one
    :class:`WeightsNotFoundError` naming the model and how to get them.
    """
    name = str(model_id_or_dir)
    stub_fix = ""  # what to do about a 2-token stub tokenizer (see check_tokenizer)
    if name in ("tiny", "tiny-base"):
        from anoplug.diffusion.tiny import load_tiny_base

        pipe = load_tiny_base()
    elif name == TINY_INPAINT or _is_dir(name, TINY_INPAINT_DIR):
        pipe = load_tiny_inpaint()
    elif name in TINY_RANDOM:
        from anoplug.diffusion import tiny

        pipe = tiny.tiny_ldm_pipeline() if name.endswith("-ldm") else tiny.tiny_sd_pipeline()
    else:
        from diffusers import DiffusionPipeline

        local = Path(name).expanduser()
        local_only = kwargs.pop("local_files_only", None)
        if allow_download is None:
            allow_download = downloads_allowed() if local_only is None else not local_only
        if local.exists() and not (local / "model_index.json").is_file():
            raise WeightsNotFoundError(f"{local} is not a diffusers pipeline directory (no model_index.json)")
        online = bool(allow_download) and not local.exists()
        stub_fix = (f"copy the complete model: {local}/tokenizer lacks its vocabulary files" if local.exists() else
                    f"the cached copy of {name} is incomplete: set {ALLOW_DOWNLOAD_ENV}=1 to download it again, or "
                    "pass a local directory holding the complete model")
        try:
            with hub_offline(not online):
                pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else name,
                                                         local_files_only=not online, torch_dtype=torch_dtype, **kwargs)
        except (OSError, ValueError) as e:
            raise WeightsNotFoundError(_not_loaded(name, e, online=online, local=local.exists())) from e
    if getattr(pipe, "tokenizer", None) is not None:
        check_tokenizer(pipe.tokenizer, f"tokenizer of {name}", fix=stub_fix)
    fam = family or guess_family(pipe)
    pipe.scheduler = make_scheduler(scheduler)
    pipe.anoplug_family = fam
    pipe.set_progress_bar_config(disable=True)  # anoplug shows its own progress; no tqdm widgets in notebooks
    if hasattr(pipe, "safety_checker") and getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # industrial images; the checker also needs extra downloads
    return pipe.to(device)


def load_tiny_inpaint(directory: str | Path | None = None, *, base: str | Path | None = None) -> Any:
    """The offline stand-in for SD-inpainting: a ``StableDiffusionInpaintPipeline`` with a 9-channel UNet.

    ``directory`` (default ``assets/tiny_inpaint``) holds only what inpainting training made
    (``unet/``, ``scheduler/``, ``model_index.json``); the VAE, text encoder and tokenizer come
    from ``base`` (default the tiny base), passed to diffusers' ``from_pretrained`` as
    components, so 1.6 MB of weights are not stored twice. A complete SD-inpainting directory
    needs none of this: ``load_pipeline(dir)``.
    """
    from diffusers import AutoencoderKL, StableDiffusionInpaintPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    from anoplug.diffusion.tiny import TINY_BASE_DIR

    d = Path(directory) if directory is not None else TINY_INPAINT_DIR
    b = Path(base) if base is not None else TINY_BASE_DIR
    needed = [d / "model_index.json", d / "unet" / "config.json", *(b / c for c in ("vae", "text_encoder", "tokenizer"))]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise WeightsNotFoundError(f"the tiny inpainting base is incomplete (missing {', '.join(missing)}); restore "
                                   "anoplug/assets/tiny_inpaint and tiny_base from git, or rebuild it with "
                                   "tools/train_tiny_inpaint.py (docs/zoo.md)")
    shared = {"vae": AutoencoderKL.from_pretrained(str(b), subfolder="vae", local_files_only=True),
              "text_encoder": CLIPTextModel.from_pretrained(str(b), subfolder="text_encoder", local_files_only=True),
              "tokenizer": CLIPTokenizer.from_pretrained(str(b), subfolder="tokenizer", local_files_only=True)}
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(d), **shared, safety_checker=None, feature_extractor=None,
                                                          requires_safety_checker=False, local_files_only=True)
    if pipe.unet.config.in_channels != INPAINT_IN_CHANNELS:
        raise WeightsNotFoundError(f"{d}/unet has {pipe.unet.config.in_channels} input channels, not the "
                                   f"{INPAINT_IN_CHANNELS} of an inpainting UNet")
    return pipe


def _is_dir(name: str, directory: Path) -> bool:
    try:
        return Path(name).expanduser().resolve() == directory.resolve()
    except OSError:
        return False


def _not_loaded(name: str, error: BaseException, *, online: bool, local: bool) -> str:
    """One line: what could not be loaded, and the way to get it (the opt-in when offline)."""
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
    cause = cause if len(cause) <= 160 else cause[:157] + "..."
    get = (f"download them on a connected machine (`huggingface-cli download {name} --local-dir DIR`) and pass DIR, "
           "or use the bundled offline stand-in 'tiny-base'")
    if local:
        return f"cannot load diffusion weights from {name}: {cause}"
    if not online:
        if isinstance(error, OSError):
            return (f"diffusion weights {name!r} are not on this machine (not in the Hugging Face cache, or "
                    f"incomplete) and anoplug does not download by default: set {ALLOW_DOWNLOAD_ENV}=1 to let "
                    f"diffusers fetch them, or {get}")
        return (f"cannot load diffusion weights {name!r} from the local cache: {cause} (downloads are off; "
                f"set {ALLOW_DOWNLOAD_ENV}=1 to allow them, or {get})")
    from huggingface_hub import constants

    blocked = (" — HF_HUB_OFFLINE is set in this environment, which blocks the download even with "
               f"{ALLOW_DOWNLOAD_ENV}=1" if constants.HF_HUB_OFFLINE else "")
    return f"cannot download diffusion weights {name!r}: {cause}{blocked}; {get}"


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
