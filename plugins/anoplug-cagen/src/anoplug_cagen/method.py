"""CAGEN (ICASSP 2024): a ControlNet on a frozen latent diffusion model puts a defect where a mask says.

No code was released and the paper's full text was not reachable here, so what follows is
the published summary (the spec's §7) plus our reading of it; the README marks every choice
*paper* or *our assumption*.

1. **Few shots** (paper): 3 image + mask pairs per defect type, the first three of each type
   in the order given (which three: our assumption).
2. **ControlNet fine-tuning** (paper): a trainable copy of the frozen UNet's encoder,
   conditioned on the binary defect mask as its hint (1 channel: our assumption), trained
   with the base model's ε-loss on the shots while the UNet, VAE and text encoder stay frozen
   (the ControlNet recipe). The mask controls *where* the defect appears.
3. **Text prompt per defect type** (paper: "a text prompt controls anomaly style"): each shot is
   captioned ``"a photo of a {object} with {defect}"`` (template: our assumption, the spec's
   proposal), so the defect type selects the prompt at generation.
4. **Generation with latent fusion** (paper: the generated anomalous features are fused with the
   normal image's features before decoding): DDIM with classifier-free guidance through the
   ControlNet, the normal image's noised latent written back outside the mask before every step
   (our reading of "feature fusion", spec §2.1 ``BlendBefore``), then the final latent is fused
   with the normal latent outside the mask and decoded. The background thus stays the normal
   image (up to the VAE's reconstruction; ``paste_background`` makes it exact).

Real path: ``base_model`` = a local Stable Diffusion 1.5 directory (the paper's base); the
ControlNet is copied from its UNet and trained by ``fit``. Offline default: the bundled tiny base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from anoplug.conditions import ConditionError
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import GOOD, Batch

__all__ = ["CagenParams", "Cagen", "PRESETS", "PROMPT", "select_shots", "latent_mask", "fuse_latents"]

#: the caption of a shot and the prompt of a generation (spec §7's proposal; the paper's wording is not known)
PROMPT = "a photo of a {object} with {defect}"

#: ``paper``: the ControlNet recipe's defaults (the paper gives none); ``cpu``: the same code, scaled down
#: for the bundled tiny base (the shipped checkpoint was trained with it).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"lr": 2e-4, "fit_steps": 1500, "steps": 20, "guidance": 3.0},
}

_PIPELINES: dict[str, Any] = {}


def _pipeline(name: str) -> Any:
    """Load each frozen base once per process (the ControlNet is separate; the base is never modified)."""
    if name not in _PIPELINES:
        from anoplug.diffusion.loading import load_pipeline

        _PIPELINES[name] = load_pipeline(name)
    return _PIPELINES[name]


class CagenParams(Params):
    base_model: str = Field("tiny-base", description="'tiny-base' (bundled, offline), 'tiny-random', or a local "
                            "Stable Diffusion 1.5 directory (the paper's base)")
    resolution: int = Field(0, ge=0, le=1024, description="working size in px (0 = the base model's native size)")
    shots_per_type: int = Field(3, ge=1, le=100, description="image+mask pairs per defect type that train (paper: 3)")
    prompt: str = Field(PROMPT, description="caption template with {object} and {defect} (our assumption)")
    object_name: str = Field("", description="{object} of the prompt ('' = the anomalies' meta category, else "
                             "'object')")
    lr: float = Field(1e-5, gt=0.0, le=1.0, description="AdamW learning rate (ControlNet recipe: 1e-5)")
    batch_size: int = Field(4, ge=1, le=256, description="training batch (ControlNet recipe: 4)")
    weight_decay: float = Field(1e-2, ge=0.0, le=1.0, description="AdamW weight decay (diffusers' ControlNet example)")
    fit_steps: int = Field(5000, ge=1, le=1_000_000, description="ControlNet training steps (our assumption; the "
                           "paper gives none)")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps (diffusers' ControlNet pipeline default)")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta")
    guidance: float = Field(7.5, ge=1.0, le=30.0, description="classifier-free guidance against '' (diffusers' default)")
    conditioning_scale: float = Field(1.0, ge=0.0, le=5.0, description="multiplier of the ControlNet residuals")
    fusion: Literal["before", "none"] = Field("before", description="latent fusion during sampling: the normal "
                                              "latent noised to t outside the mask before every step, or none")
    final_fusion: bool = Field(True, description="fuse the final latent with the normal latent outside the mask "
                               "before decoding (paper: features fused before decoding)")
    latent_mask_rule: Literal["any", "nearest", "area"] = Field(
        "any", description="pixel mask to latent size: 'any' (a latent cell with any defect pixel), 'nearest', or "
        "'area' (mean >= latent_mask_threshold)")
    latent_mask_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="threshold of the 'area' rule")
    paste_background: bool = Field(False, description="paste the input's pixels outside the mask bit-exactly (off: "
                                   "the decoded fused latent, as the paper)")
    defect_type: str = Field("", description="type to generate ('' = conditions.defect_type, else drawn per sample)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit's draws (batches, timesteps, noise) and of the "
                      "hint embedding's initial weights")


# -- 1. few shots ---------------------------------------------------------------------------------------------------
def select_shots(labels: Sequence[str], k: int) -> list[int]:
    """Indices of the first ``k`` samples of each defect type (types in sorted order; ``good`` never)."""
    chosen: list[int] = []
    for t in sorted({lab for lab in labels if lab != GOOD}):
        chosen += [i for i, lab in enumerate(labels) if lab == t][:k]
    return chosen


# -- 4. latent fusion helpers -----------------------------------------------------------------------------------------
def latent_mask(pix: torch.Tensor, size: Sequence[int], rule: str = "any", threshold: float = 0.5) -> torch.Tensor:
    """The pixel mask (1 = defect) at latent ``size`` in {0, 1}; 'any' keeps thin defects that 'area' would drop."""
    pix = pix.float()
    if rule == "nearest":
        return F.interpolate(pix, size=tuple(size), mode="nearest")
    m = F.adaptive_avg_pool2d(pix, tuple(size)) if rule == "area" else F.adaptive_max_pool2d(pix, tuple(size))
    return (m >= (threshold if rule == "area" else 0.5)).float()


def fuse_latents(generated: torch.Tensor, normal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``m·z_gen + (1−m)·z_normal``: the anomalous features inside the mask, the normal image's elsewhere."""
    return mask * generated + (1 - mask) * normal


class Cagen(LearnedGenerator):
    """Few-shot: ``fit(None, anomalies)`` on real defects with masks, then ``generate(normal_batch)``.

    Conditions (optional): ``target_mask`` — where the defect goes (else one of the fitted
    shots' masks of the type, drawn and flipped per sample); ``defect_type`` — which fitted type.
    """

    name = "cagen"
    title = "CAGEN: ControlNet mask-controlled anomalies with latent fusion"
    category = "diffusion-image"
    tags = ("mask",)
    paper = Paper("CAGEN: Controllable Anomaly Generator using Diffusion Model", "ICASSP", 2024,
                  "https://ieeexplore.ieee.org/document/10447663")
    Params = CagenParams
    requires = Requires(fit=True, anomalies=True, weights="Stable Diffusion 1.5 directory (offline: tiny-base)",
                        accepts=("target_mask", "defect_type"))
    preserves_outside_mask: ClassVar[bool] = False  # the fused latent is decoded; paste_background=True makes it exact
    clip_grad_norm: ClassVar[float | None] = 1.0  # diffusers' ControlNet example
    #: read at generation only (sampler, fusion, mask rule); the ControlNet and its training recipe stay as saved.
    generation_params: ClassVar[tuple[str, ...]] = (
        "steps", "eta", "guidance", "conditioning_scale", "fusion", "final_fusion", "latent_mask_rule",
        "latent_mask_threshold", "paste_background", "defect_type")
    pretrained: ClassVar[dict[str, str]] = {"metal": "weights/metal"}  # tools/train_shipped.py (float16 on disk)
    smoke_params: ClassVar[dict[str, Any]] = {"steps": 2}

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.types: list[str] = []
        self.object_word = ""
        self.controlnet: nn.Module | None = None
        self.shot_masks: torch.Tensor | None = None  # [N,1,S,S] the fitted shots' masks (for drawn masks)
        self.shot_types: list[str] = []
        self.shot_sources: list[str] = []
        self.history: list[dict] = []

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Cagen:
        """A generator with preset ``name`` (``paper`` or ``cpu``) and overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # -- the frozen base ----------------------------------------------------------------------------------------------
    @property
    def parts(self) -> Any:
        from anoplug.diffusion.loading import Parts

        return Parts.from_pipeline(_pipeline(self.params.base_model)).freeze()

    def _size(self, parts: Any) -> int:
        return self.params.resolution or int(parts.unet.config.sample_size) * parts.vae_factor

    def _prompt(self, defect: str) -> str:
        return self.params.prompt.format(object=self.object_word or "object", defect=defect.replace("_", " "))

    def _build(self, parts: Any, types: Sequence[str], n_shots: int, size: int) -> None:
        """The ControlNet copied from the frozen UNet's encoder, with a 1-channel (mask) hint embedding."""
        from anoplug.diffusion.finetune.controlnet import make_controlnet

        self.types = list(types)
        self.controlnet = make_controlnet(parts.unet, vae_factor=parts.vae_factor, conditioning_channels=1,
                                          seed=self.params.seed)
        self.shot_masks = torch.zeros(n_shots, 1, size, size)

    def modules(self) -> dict[str, nn.Module]:
        return {"controlnet": self.controlnet} if self.controlnet is not None else {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {} if self.shot_masks is None else {"shot_masks": self.shot_masks}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        if self.shot_masks is None or set(tensors) != {"shot_masks"}:
            raise ValueError(f"{self.name}: unexpected extra tensors {sorted(tensors)}")
        self.shot_masks = tensors["shot_masks"].float().clone()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "defect_types": self.types, "object_word": self.object_word,
                "shot_types": self.shot_types, "shot_sources": self.shot_sources,
                "shot_mask_size": None if self.shot_masks is None else int(self.shot_masks.shape[-1])}

    def restore_config(self, config: dict[str, Any]) -> None:
        if config.get("defect_types"):
            self.object_word = config.get("object_word", "")
            self.shot_types = list(config.get("shot_types", []))
            self.shot_sources = list(config.get("shot_sources", []))
            self._build(self.parts, config["defect_types"], len(self.shot_types), int(config["shot_mask_size"]))

    def to(self, device: str | torch.device) -> Cagen:
        super().to(device)
        _pipeline(self.params.base_model).to(self.device)
        return self

    # -- 1.–3. training -------------------------------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> Any:
        """Pick 3 shots per type, caption them, copy the ControlNet, encode latents and captions once.

        ``normals`` are not used in training (generation takes them as input).
        """
        from anoplug.diffusion.finetune.conditioned import encode_pairs

        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies (images, masks and labels of real defects)")
        idx = select_shots(anomalies.label, self.params.shots_per_type)
        if not idx or not all(bool(anomalies.mask[i].any()) for i in idx):
            raise ValueError(f"{self.name}.fit: every anomaly needs a non-empty mask and a defect label (not 'good')")
        shots = anomalies[idx]
        parts = self.parts
        size = self._size(parts)
        meta_cat = next((m.get("category") for m in shots.meta if isinstance(m, dict) and m.get("category")), "")
        self.object_word = self.params.object_name or str(meta_cat or "object")
        self._build(parts, sorted(set(shots.label)), len(idx), size)
        self.shot_types = list(shots.label)
        self.shot_sources = [str(m.get("source", i)) if isinstance(m, dict) else str(i) for i, m in zip(idx, shots.meta)]
        img = F.interpolate(shots.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        hint = (F.interpolate(shots.mask, size=(size, size), mode="bilinear", align_corners=False) > 0.5).float()
        self.shot_masks = hint.cpu().clone()
        self.controlnet.train()
        self.controlnet.requires_grad_(True)
        return encode_pairs(parts, img, [self._prompt(t) for t in shots.label], hint)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """AdamW on the ControlNet only (β 0.9/0.999, ε 1e-8; the frozen base never enters an optimiser)."""
        return {"controlnet": torch.optim.AdamW(self.controlnet.parameters(), lr=self.params.lr, betas=(0.9, 0.999),
                                                eps=1e-8, weight_decay=self.params.weight_decay)}

    def training_step(self, data: Any, step: int, generator: torch.Generator) -> torch.Tensor:
        """The frozen UNet's ε-MSE with the ControlNet's residuals, on a batch drawn from the shots."""
        from anoplug.diffusion.finetune.controlnet import controlnet_loss

        return controlnet_loss(self.parts, self.controlnet, data, batch_size=self.params.batch_size, generator=generator)

    # -- 4. generation --------------------------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the defect type, and (without a target mask) which shot's mask and its flips."""
        if not self.types:
            raise NotFittedError(f"{self.name} has no fitted defect types")
        asked = batch.conditions.defect_type
        given_mask = batch.conditions.target_mask is not None
        out = Samples()
        for i, g in enumerate(rngs):
            drawn = self.types[int(torch.randint(0, len(self.types), (1,), generator=g))]
            t = (asked[i] if asked is not None else None) or self.params.defect_type or drawn
            if t not in self.types:
                raise ConditionError(f"conditions.defect_type {t!r} was not fitted; known: {', '.join(self.types)}")
            rec: dict[str, Any] = {"defect_type": t}
            if not given_mask:
                of_type = [k for k, s in enumerate(self.shot_types) if s == t]
                rec["shot"] = of_type[int(torch.randint(0, len(of_type), (1,), generator=g))]
                rec["hflip"], rec["vflip"] = (bool(v) for v in (torch.rand(2, generator=g) < 0.5))
            out.append(rec)
        return out

    def _replayed(self, samples: Samples, given_mask: bool) -> Samples:
        for i, s in enumerate(samples):
            if not isinstance(s, dict) or s.get("defect_type") not in self.types:
                raise ValueError(f"samples[{i}]: defect_type must be one of {self.types}, got {s!r}")
            if not given_mask and not (isinstance(s.get("shot"), int) and 0 <= s["shot"] < len(self.shot_types)):
                raise ValueError(f"samples[{i}]: 'shot' must index the {len(self.shot_types)} fitted shots")
        return Samples(dict(s) for s in samples)

    def _drawn_masks(self, samples: Samples, size: int) -> torch.Tensor:
        ms = []
        for s in samples:
            m = self.shot_masks[s["shot"]]
            m = m.flip(-1) if s.get("hflip") else m
            ms.append(m.flip(-2) if s.get("vflip") else m)
        m = torch.stack(ms)
        return m if m.shape[-1] == size else (F.interpolate(m, size=(size, size), mode="bilinear") > 0.5).float()

    def _hint(self, work_mask: torch.Tensor) -> torch.Tensor:
        """The ControlNet's hint: the binary target mask itself at the working size, 1 channel (as in training)."""
        return work_mask

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Type (and mask) per sample, then ControlNet-guided DDIM with latent fusion outside the mask.

        Draw order per sample rng: type, [shot, flips], then the DDIM start noise, the noise of
        each step's q(z0, t) and the scheduler's. A replay still runs :meth:`sample` first.
        """
        from anoplug.diffusion import sampling as S
        from anoplug.diffusion.finetune.controlnet import ControlledModel

        p = self.params
        given = batch.conditions.target_mask
        drawn = self.sample(batch, rngs)
        samples = drawn if samples is None else self._replayed(samples, given is not None)
        parts = self.parts
        size = self._size(parts)
        h, w = batch.size
        if given is not None:
            out_mask = given
            work = (F.interpolate(given, size=(size, size), mode="bilinear", align_corners=False) > 0.5).float()
        else:
            work = self._drawn_masks(samples, size)
            out_mask = work if (h, w) == (size, size) else (
                F.interpolate(work, size=(h, w), mode="bilinear", align_corners=False) > 0.5).float()
        work = work.to(self.device)
        img = F.interpolate(batch.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        z0 = parts.encode_image(img)
        lat = latent_mask(work, z0.shape[-2:], p.latent_mask_rule, p.latent_mask_threshold)
        types = [s["defect_type"] for s in samples]
        cond = parts.encode_text([self._prompt(t) for t in types])
        model = ControlledModel(parts.unet, self.controlnet, self._hint(work), conditioning_scale=p.conditioning_scale)
        hooks: list[S.Hook] = [S.BlendBefore(z0, lat)] if p.fusion == "before" else []
        if p.guidance > 1:
            hooks.append(S.ClassifierFreeGuidance(parts.encode_text([""] * len(batch)), p.guidance, batched=True))
        z = S.sample(model, parts.scheduler, shape=z0.shape, rngs=rngs, num_steps=p.steps, eta=p.eta, cond=cond,
                     device=z0.device, hooks=hooks)
        if p.final_fusion:
            z = fuse_latents(z, z0, lat)
        gen = parts.decode(z)
        if (h, w) != (size, size):
            gen = F.interpolate(gen, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
        gen = gen.to(batch.image.device)
        if p.paste_background:
            gen = torch.where(out_mask.expand_as(gen) > 0.5, gen, batch.image)
        out = batch.clone()
        out.image = gen.float().contiguous()
        out.mask = out_mask.float().clone()
        out.label = [t if bool(m.any()) else GOOD for t, m in zip(types, out.mask)]
        return out, samples
