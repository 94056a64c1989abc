"""Glass-defect DDPM (Boroujeni, Abedi, Bush; arXiv 2505.03134, Computer and Decision Making 2025).

An *unconditional* pixel-space DDPM is trained on the defective class alone, then samples
extra defective images from pure noise to rebalance a good/defective classifier. Nothing is
conditioned and no mask is produced: the output is an image with an image-level label.
Read top to bottom; the code sections carry the same numbers.

1. **Data: the defective class only.** ``fit`` trains on the real *anomalies*; normals never
   enter the loss (they are kept only as a small bank for the optional mask extension).
   Images are resized to the working side (paper: 128²) and normalised with mean = std =
   0.5, i.e. to [−1, 1].
2. **Network.** ``diffusers.UNet2DModel``, 3 → 3 channels, ε-prediction. ``preset="paper"``
   is the 6-level 128-px UNet of the diffusers training tutorial whose other settings the
   paper reports (our assumption: the paper names no architecture); ``preset="cpu"`` is a
   3-level 32-px UNet of the same kind.
3. **Forward process.** ``DDPMScheduler``: linear β from 1e−4 to 0.02 over T = 1000 steps.
4. **Training.** ``‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖²`` with t uniform and ε ~ N(0, I);
   AdamW, lr 1e−4, 1300 epochs (paper); batch 16 (our assumption), on ``anoplug.train``.
5. **Generation.** Ancestral DDPM sampling from x_T ~ N(0, I) through ``sample_steps``
   steps (paper: all 1000), then the image goes back to [0, 1] at the batch's size. The input
   batch supplies only the count, size and provenance. Label: ``label`` ("defective");
   mask: none, by design (``mask="none"``): the class declares ``provides_mask = False``, so
   each sample's meta says ``provides_mask: False`` (the returned mask is all zeros and means
   "unknown"), the writer writes no ground-truth file and records ``"mask": null``, and
   mask-reading evaluators refuse the samples; the draw record says ``{"mask": "none"}``.
   ``mask="nearest_normal"`` derives one against the nearest normal of the bank (an
   extension, :mod:`anoplug_glass_ddpm.derived_mask`); that instance provides a mask.
6. **Memorisation check** (the spec's pitfall for 63 training images):
   :mod:`anoplug_glass_ddpm.memorisation`.
7. **The paper's use**, rebalancing a good/defective classifier: :mod:`anoplug_glass_ddpm.rebalance`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import Batch

__all__ = ["GlassDDPM", "GlassDDPMParams", "PRESETS", "build_unet", "make_scheduler", "to_model", "to_image"]

#: per preset: working side, UNet layout, epochs and sampling steps (see the README's table)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"resolution": 128, "block_out_channels": (128, 128, 256, 256, 512, 512), "layers_per_block": 2,
              "attention_level": 4, "norm_num_groups": 32, "epochs": 1300, "sample_steps": 1000, "lr": 1e-4, "ema": 0.0},
    "cpu": {"resolution": 32, "block_out_channels": (16, 32, 64), "layers_per_block": 1,
            "attention_level": 2, "norm_num_groups": 8, "epochs": 350, "sample_steps": 50, "lr": 1e-3, "ema": 0.995},
}


class GlassDDPMParams(Params):
    preset: Literal["paper", "cpu"] = Field("paper", description="'paper': 128 px, 6-level UNet, lr 1e-4, 1300 epochs, "
                                            "1000 sampling steps; 'cpu': 32 px, 3-level UNet, lr 1e-3, EMA 0.995, 350 "
                                            "epochs, 50 steps")
    resolution: int = Field(0, ge=0, le=1024, description="working side in px (0 = the preset's)")
    epochs: int = Field(0, ge=0, le=100_000, description="passes over the defect images (0 = the preset's; "
                        "fit(steps=) overrides)")
    batch_size: int = Field(16, ge=1, le=1024, description="defect images per training step (our assumption)")
    lr: float = Field(0.0, ge=0, le=1.0, description="AdamW learning rate (0 = the preset's: paper 1e-4, cpu 1e-3)")
    ema_decay: float = Field(-1.0, ge=-1, lt=1, description="EMA decay of the UNet kept after fit (-1 = the preset's: "
                             "paper none, cpu 0.995; 0 = none)")
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="AdamW weight decay (torch's default; our assumption)")
    train_timesteps: int = Field(1000, ge=2, le=20_000, description="diffusion steps T of the linear β schedule")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="first β of the linear schedule (paper: 1e-4)")
    beta_end: float = Field(0.02, gt=0, lt=1, description="last β of the linear schedule (paper: 0.02)")
    sample_steps: int = Field(0, ge=0, le=20_000, description="DDPM steps at generation (0 = the preset's; paper: 1000)")
    label: str = Field("defective", min_length=1, description="the label of every generated image (the paper's "
                       "binary class)")
    mask: Literal["none", "nearest_normal"] = Field(
        "none", description="'none': no mask, by design (paper); 'nearest_normal': where the image departs from "
        "its nearest normal of the bank (extension)")
    mask_threshold: float = Field(0.08, gt=0, lt=1, description="nearest_normal: a pixel is masked when a blurred "
                                  "channel differs by more than this")
    mask_sigma: float = Field(0.7, ge=0, le=8, description="nearest_normal: Gaussian blur (px) before comparing")
    bank_size: int = Field(32, ge=0, le=1024, description="normals kept (8-bit, working side) for nearest_normal")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the initial weights and of fit's draws")

    def arch(self) -> dict[str, Any]:
        """The preset's values, with the fields set here (non-zero) in their place."""
        a = dict(PRESETS[self.preset])
        for k in ("resolution", "epochs", "sample_steps"):
            a[k] = int(getattr(self, k)) or a[k]
        a["lr"] = float(self.lr) or a["lr"]
        a["ema"] = a["ema"] if self.ema_decay < 0 else float(self.ema_decay)
        return a


def to_model(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [−1, 1]: the paper's normalisation with mean = std = 0.5."""
    return (x - 0.5) / 0.5


def to_image(x: torch.Tensor) -> torch.Tensor:
    return (x * 0.5 + 0.5).clamp(0, 1)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


# -- 2. the network ------------------------------------------------------------------------------------
def build_unet(arch: dict[str, Any], seed: int = 0) -> nn.Module:
    """``UNet2DModel`` 3 → 3 with self-attention at ``attention_level`` (the paper preset: the diffusers
    tutorial's 128-px network, whose down path is DownBlock2D ×4, AttnDownBlock2D, DownBlock2D)."""
    from diffusers import UNet2DModel

    from anoplug.diffusion.tiny import seeded

    chans = tuple(arch["block_out_channels"])
    down = tuple("AttnDownBlock2D" if i == arch["attention_level"] else "DownBlock2D" for i in range(len(chans)))
    up = tuple("AttnUpBlock2D" if b == "AttnDownBlock2D" else "UpBlock2D" for b in reversed(down))
    with seeded(seed):
        return UNet2DModel(sample_size=arch["resolution"], in_channels=3, out_channels=3, block_out_channels=chans,
                           layers_per_block=arch["layers_per_block"], down_block_types=down, up_block_types=up,
                           norm_num_groups=arch["norm_num_groups"])


# -- 3. the forward process ----------------------------------------------------------------------------
def make_scheduler(params: GlassDDPMParams) -> Any:
    """Linear β 1e−4 → 0.02 over T steps, ε-prediction, x̂₀ clipped to [−1, 1] (diffusers' DDPM defaults)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=params.train_timesteps, beta_start=params.beta_start,
                         beta_end=params.beta_end, beta_schedule="linear", prediction_type="epsilon",
                         clip_sample=True, variance_type="fixed_small")


class GlassDDPM(LearnedGenerator):
    """``fit(normals, anomalies)`` learns the defective class; ``generate(batch)`` samples new defective images.

    The input images are not edited: each output is a new image from noise (resized to the
    batch's size). By design there is no mask (``mask="none"``, ``provides_mask = False``): an
    image-level defect label; ``mask="nearest_normal"`` makes an instance that provides one.
    """

    name = "glass-ddpm"
    title = "Glass-defect DDPM: unconditional pixel DDPM trained on defects only"
    category = "diffusion-image"
    paper = Paper("Enhancing Glass Defect Detection with Diffusion Models: Addressing Imbalanced Datasets in "
                  "Manufacturing Quality Control", "Computer and Decision Making", 2025,
                  "https://arxiv.org/abs/2505.03134")
    Params = GlassDDPMParams
    generation_params = ("sample_steps", "label", "mask", "mask_threshold", "mask_sigma")
    requires = Requires(fit=True, anomalies=True)
    preserves_outside_mask: ClassVar[bool] = False  # the whole image is generated
    provides_mask: ClassVar[bool] = False  # the paper's output: an image-level label, no defect region
    pretrained: ClassVar[dict[str, str]] = {"bottle": "weights/bottle"}

    def mask_provided(self) -> bool:
        """Only the nearest-normal extension locates the defect; the paper's default has no mask."""
        return self.params.mask != "none"

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.unet: nn.Module | None = None
        self.normal_bank: torch.Tensor | None = None  # uint8 [K,3,s,s]: only for the mask extension
        self.history: list[dict] = []
        decay = float(self.params.arch()["ema"])
        self.ema = {"unet": decay} if decay > 0 else {}  # the Trainer keeps the average and applies it at the end

    @property
    def resolution(self) -> int:
        return int(self.params.arch()["resolution"])

    def _build(self) -> None:
        arch = self.params.arch()
        levels = len(arch["block_out_channels"])
        if arch["resolution"] % 2 ** (levels - 1):
            raise ValueError(f"{self.name}: resolution {arch['resolution']} must be divisible by {2 ** (levels - 1)} "
                             f"for preset={self.params.preset!r}")
        self.unet = build_unet(arch, self.params.seed).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet} if self.unet is not None else {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"normal_bank": self.normal_bank} if self.normal_bank is not None else {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        unknown = set(tensors) - {"normal_bank"}
        if unknown:
            raise ValueError(f"unexpected extra tensors {sorted(unknown)}")
        bank = tensors.get("normal_bank")
        if bank is not None and (bank.dtype != torch.uint8 or bank.ndim != 4 or bank.shape[1] != 3):
            raise ValueError(f"normal_bank must be uint8 [K,3,H,W], got {bank.dtype} {list(bank.shape)}")
        self.normal_bank = bank

    def config(self) -> dict[str, Any]:
        unet = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")} if self.unet is not None else None
        return {**super().config(), "resolution": self.resolution, "unet": unet,
                "last_losses": [h["loss"] for h in self.history[-10:]]}

    def restore_config(self, config: dict[str, Any]) -> None:
        """The UNet as saved (its diffusers config), else as the parameters describe it; load() fills in the weights."""
        if config.get("unet"):
            from diffusers import UNet2DModel

            self.unet = UNet2DModel.from_config(config["unet"]).to(self.device)
        else:
            self._build()

    @classmethod
    def from_diffusers(cls, directory: str | Path, **params: Any) -> GlassDDPM:
        """A fitted generator from a local diffusers checkpoint: a ``DDPMPipeline`` folder (``unet/`` and
        ``scheduler/``, what diffusers' ``train_unconditional.py`` writes) or a bare ``UNet2DModel`` folder.

        The working side comes from the UNet's ``sample_size`` and T and the β range from the
        scheduler config when there is one (it must be a linear schedule); ``params`` set the rest.
        Never downloads: the folder must exist.
        """
        from diffusers import UNet2DModel

        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"no diffusers checkpoint folder {d}")
        unet = UNet2DModel.from_pretrained(str(d), subfolder="unet" if (d / "unet").is_dir() else None,
                                           local_files_only=True)
        if unet.config.in_channels != 3 or unet.config.out_channels != 3:
            raise ValueError(f"{d}: a 3 -> 3 channel UNet2DModel is needed, got {unet.config.in_channels} -> "
                             f"{unet.config.out_channels}")
        sched = d / "scheduler" / "scheduler_config.json"
        if sched.is_file():
            cfg = json.loads(sched.read_text())
            if cfg.get("beta_schedule", "linear") != "linear":
                raise ValueError(f"{sched}: beta_schedule {cfg['beta_schedule']!r}; this method uses a linear one")
            params = {"train_timesteps": cfg.get("num_train_timesteps", 1000), "beta_start": cfg.get("beta_start", 1e-4),
                      "beta_end": cfg.get("beta_end", 0.02), **params}
        size = unet.config.sample_size
        gen = cls(**{"resolution": size if isinstance(size, int) else size[0], **params})
        gen.unet = unet.eval()
        return gen.mark_fitted()

    # -- 1. data: the defective class only ---------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """The UNet and the training tensor: the *anomalies* only, at the working side, in [−1, 1].

        ``normals`` never reach the loss; up to ``bank_size`` of them (evenly spaced) are kept as
        8-bit thumbnails for ``mask="nearest_normal"``.
        """
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs the defective images (anomalies=): the DDPM learns that class only")
        self._build()
        s = self.resolution
        x0 = to_model(_resize(anomalies.image.float(), (s, s))).to(self.device)
        self.normal_bank = None
        if normals is not None and len(normals) and self.params.bank_size:
            k = min(self.params.bank_size, len(normals))
            ids = torch.linspace(0, len(normals) - 1, k).round().long()
            thumbs = _resize(normals.image[ids].float(), (s, s))
            self.normal_bank = (thumbs.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        return {"x0": x0, "sched": make_scheduler(self.params)}

    def planned_steps(self, steps: int | None, data: dict[str, Any]) -> int:
        """``steps``, or ``epochs`` passes over the defect images at ``batch_size``."""
        if steps is not None:
            return int(steps)
        return int(self.params.arch()["epochs"]) * math.ceil(len(data["x0"]) / self.params.batch_size)

    # -- 4. training --------------------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": torch.optim.AdamW(self.unet.parameters(), lr=self.params.arch()["lr"],
                                          weight_decay=self.params.weight_decay)}

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> torch.Tensor:
        """The ε-prediction loss on a batch of defect images (draws: indices, noise, timesteps)."""
        x0, g = data["x0"], generator
        idx = torch.randint(0, len(x0), (min(self.params.batch_size, len(x0)),), generator=g)
        batch = x0[idx.to(x0.device)]
        noise = torch.randn(batch.shape, generator=g).to(x0.device)
        t = torch.randint(0, self.params.train_timesteps, (len(idx),), generator=g).to(x0.device)
        x_t = data["sched"].add_noise(batch, noise, t)
        return F.mse_loss(self.unet(x_t, t).sample, noise)

    # -- 5. generation ------------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Nothing is chosen per sample but the noise, which comes from each sample's rng at sampling time;
        the record says how the mask was made (``"none"`` by design)."""
        return Samples({"mask": self.params.mask} for _ in rngs)

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """DDPM from pure noise at the working side, then resized to the batch's size (8-bit levels)."""
        from anoplug.diffusion.sampling import sample

        if self.unet is None:
            raise NotFittedError(f"{self.name} is not fitted")
        records = self.sample(batch, rngs)
        if samples is not None:
            for i, rec in enumerate(samples):
                if not isinstance(rec, dict) or rec.get("mask") not in ("none", "nearest_normal"):
                    raise ValueError(f"samples[{i}] must be a record {{'mask': 'none' | 'nearest_normal'}}, got {rec!r}")
        s, (h, w) = self.resolution, batch.size
        self.unet.eval()

        def model(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            return self.unet(x, t).sample

        x = sample(model, make_scheduler(self.params), shape=(len(batch), 3, s, s), rngs=rngs,
                   num_steps=int(self.params.arch()["sample_steps"]), device=self.device)
        image = _resize(to_image(x), (h, w)).clamp(0, 1)
        image = (image * 255).round() / 255  # 8-bit levels: what a PNG keeps, so the mask rule sees the same bytes
        mask = torch.zeros(len(batch), 1, h, w, device=image.device)
        extras: dict[str, torch.Tensor] = {}
        if self.params.mask == "nearest_normal":
            from anoplug_glass_ddpm.derived_mask import nearest_normal_mask

            if self.normal_bank is None or len(self.normal_bank) == 0:
                raise ValueError(f"{self.name}: mask='nearest_normal' needs the normal bank that fit keeps "
                                 "(fit with normals and bank_size > 0)")
            mask, idx = nearest_normal_mask(image, self.normal_bank.float() / 255, threshold=self.params.mask_threshold,
                                            sigma=self.params.mask_sigma)
            extras["nearest_normal"] = idx
        out = Batch(image=image.float().contiguous(), mask=mask.float(), label=[self.params.label] * len(batch),
                    meta=[dict(m) for m in batch.meta], extras=extras)
        return out, records
