"""Anodapter (Shin, Jeong, Heo; IEEE Access 2025): one DreamBooth model and two T2I-Adapters for aligned masks and images.

One text-to-image latent diffusion model is fine-tuned DreamBooth-style (UNet + text encoder)
on *both* the anomaly images and their mask images of one product class, with two
T2I-Adapters beside it. At inference a mask is generated first and the image is then
generated *from that mask*, so image and mask agree by construction.

1. **Type tokens.** Each anomaly type gets a rare token ("vfx", "frt", …) in sorted type order
   (:func:`.core.assign_type_tokens`). Anomaly images are captioned "a photo of dqd"; their
   mask images "a photo of sks with {token}"; up to 8 normal images (black mask, "a photo of
   sks") join the set.
2. **Object mask.** The class's foreground mask (the official code: U²-Net on the first
   normal image): here the first normal's ``object_mask`` (the toy data's), else all ones.
3. **Two adapters.** ``T2IAdapter(in_channels=1, channels=UNet widths, full_adapter)``: the
   *mask adapter* reads the object mask, the *image adapter* reads the anomaly mask; each
   adds its features to the UNet's down blocks.
4. **Joint loss.** Each step's batch is [anomaly image; its mask image] through the one UNet,
   the residuals [image_adapter(anomaly mask); mask_adapter(object mask)] concatenated along
   the batch, loss = ε-MSE(image) + ε-MSE(mask); AdamW on UNet, text encoder and both adapters.
5. **Stage 1 — mask.** DDIM + classifier-free guidance, prompt "a photo of sks with {token}",
   the mask adapter on the object mask; the decoded mask image's grey mean > 200 → binary mask.
6. **Stage 2 — image.** DDIM + guidance, prompt "a photo of dqd", the image adapter on the
   stage-1 mask (or on ``conditions.target_mask`` when one is given: stage 1 is then skipped).

Real path: ``base_model`` = a local Stable Diffusion v1.4 directory (diffusers layout) with
``preset="paper"``. Offline default: the committed tiny base, ``preset="cpu"``.
"""

from __future__ import annotations

import copy
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
from anoplug_anodapter.core import (
    IMAGE_PROMPT,
    adapter_residuals,
    assign_type_tokens,
    binarise_mask_image,
    joint_loss,
    mask_prompt,
    mask_to_vae_input,
)

#: what ``0`` / ``""`` resolve to per preset. ``paper``: the official script and sampler;
#: ``cpu``: the same code scaled to the tiny base (see the README's table).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"unet_training": "full", "lora_rank": 4, "adapter_res_blocks": 2, "lr": 5e-6, "fit_steps": 20000,
              "steps": 100},
    "cpu": {"unet_training": "lora", "lora_rank": 8, "adapter_res_blocks": 1, "lr": 3e-4, "fit_steps": 3000,
            "steps": 25},
}

_PIPELINES: dict[str, Any] = {}


def _pipeline(name: str) -> Any:
    """Each base model once per process; every generator fine-tunes its own copies of UNet and text encoder."""
    if name not in _PIPELINES:
        from anoplug.diffusion.loading import load_pipeline

        _PIPELINES[name] = load_pipeline(name)
    return _PIPELINES[name]


class AnodapterParams(Params):
    preset: Literal["paper", "cpu"] = Field("paper", description="'paper': the official settings (SD v1.4, full UNet, "
                                            "lr 5e-6, 20k steps, DDIM 100); 'cpu': the tiny base scaled down")
    base_model: str = Field("tiny-base", description="'tiny-base' (bundled, offline) or a local Stable Diffusion "
                            "v1.4 directory (diffusers layout)")
    resolution: int = Field(0, ge=0, le=1024, description="working side in px (0 = the base's native size; "
                            "official: 512)")
    unet_training: Literal["", "full", "lora"] = Field("", description="'full' DreamBooth UNet (official) or 'lora' "
                                                       "on its attention (our assumption, to ship small weights); "
                                                       "'' = the preset's")
    lora_rank: int = Field(0, ge=0, le=256, description="LoRA rank with unet_training='lora' (0 = the preset's)")
    adapter_res_blocks: int = Field(0, ge=0, le=4, description="residual blocks per adapter level (0 = the preset's; "
                                    "official 2)")
    train_text_encoder: bool = Field(True, description="fine-tune the full text encoder (official --train_text_encoder)")
    lr: float = Field(0.0, ge=0.0, le=1.0, description="AdamW learning rate, constant (0 = the preset's; official 5e-6)")
    fit_steps: int = Field(0, ge=0, le=1_000_000, description="training steps (0 = the preset's; official 20000)")
    batch_size: int = Field(1, ge=1, le=64, description="anomaly items per step (each adds its mask image: official 1 → 2)")
    num_normals: int = Field(8, ge=0, le=64, description="normal images with black masks in the training set "
                             "(official --num_normal_limit 8)")
    mask_weight: float = Field(1.0, ge=0.0, le=10.0, description="weight of the mask-image term of the joint loss "
                               "(official 1: the two terms summed)")
    steps: int = Field(0, ge=0, le=1000, description="DDIM steps of each stage (0 = the preset's; official 100)")
    guidance: float = Field(7.5, ge=1.0, le=30.0, description="classifier-free guidance of both stages "
                            "(StableDiffusionAdapterPipeline's default 7.5)")
    adapter_scale: float = Field(1.0, ge=0.0, le=5.0, description="adapter_conditioning_scale (pipeline default 1)")
    mask_threshold: float = Field(200.0, ge=0.0, lt=255.0, description="stage-1 mask image: grey mean of the uint8 "
                                  "image > this is anomalous (official 200)")
    object_mask: Literal["batch", "fitted"] = Field("batch", description="stage-1 hint: the batch's object_mask when "
                                                    "it has one ('batch'), or always the class mask found at fit "
                                                    "('fitted', the official single object mask)")
    defect_type: str = Field("", description="type to generate ('' = conditions.defect_type, else drawn per sample)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the module init and of fit's draws")

    def resolved(self, name: str) -> Any:
        """The value in force: this field, or the preset's when it is left at 0 / ''."""
        v = getattr(self, name)
        return PRESETS[self.preset][name] if v in (0, 0.0, "") else v


class LoraLayers(nn.Module):
    """The LoRA matrices peft added to the UNet, as one module: what ``save`` persists instead of the whole UNet."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({n.replace(".", "__"): m for n, m in unet.named_modules()
                                     if n.endswith((".lora_A", ".lora_B"))})
        if not self.layers:
            raise ValueError("the UNet carries no LoRA layers")


class Anodapter(LearnedGenerator):
    """Few-shot, per class: ``fit(normals, anomalies)`` on real defects with masks, then ``generate(batch)``.

    ``generate`` returns a *new* image with its mask (the input image supplies the size and,
    with ``object_mask="batch"``, its ``object_mask``). Conditions: ``target_mask`` (skip
    stage 1; the image follows that mask) and ``defect_type`` (the type whose token stage 1 uses).
    """

    name = "anodapter"
    title = "Anodapter: one DreamBooth model and two T2I-Adapters generating aligned anomaly masks and images"
    category = "diffusion-image"
    tags = ("mask",)
    paper = Paper("Anodapter: A Unified Framework for Generating Anomaly and Mask Images Using Diffusion Models",
                  "IEEE Access", 2025, "https://ieeexplore.ieee.org/document/11000123",
                  "https://github.com/conel77/Anodapter")
    Params = AnodapterParams
    generation_params = ("steps", "guidance", "adapter_scale", "mask_threshold", "object_mask", "defect_type")
    requires = Requires(fit=True, anomalies=True, weights="a local Stable Diffusion v1.4 directory (offline: tiny-base)",
                        accepts=("target_mask", "defect_type"))
    pretrained: ClassVar[dict[str, str]] = {"bottle": "weights/bottle"}
    smoke_params: ClassVar[dict[str, Any]] = {"steps": 2}
    clip_grad_norm: ClassVar[float | None] = 1.0  # diffusers' DreamBooth --max_grad_norm

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.types: list[str] = []
        self.type_tokens: dict[str, str] = {}
        self.unet: nn.Module | None = None
        self.text_encoder: nn.Module | None = None
        self.mask_adapter: nn.Module | None = None
        self.image_adapter: nn.Module | None = None
        self.lora: LoraLayers | None = None
        self.class_object_mask: torch.Tensor | None = None
        self.history: list[dict] = []

    # -- the model: frozen VAE, fine-tuned copies of UNet + text encoder, two adapters ---------------
    def _base(self) -> Any:
        from anoplug.diffusion.loading import Parts

        return Parts.from_pipeline(_pipeline(self.params.base_model))

    @property
    def parts(self) -> Any:
        """The base's VAE, tokenizer and scheduler with this generator's own UNet and text encoder."""
        from anoplug.diffusion.loading import Parts

        if self.unet is None:
            raise NotFittedError(f"{self.name} is not fitted: call fit() or load()")
        base = self._base()
        return Parts(self.unet, base.vae, self.text_encoder, base.tokenizer, base.scheduler, base.family)

    def _size(self) -> int:
        if self.params.resolution:
            return int(self.params.resolution)
        base = self._base()
        return int(base.unet.config.sample_size) * base.vae_factor

    def _make_modules(self) -> None:
        """Copies of the base UNet (+ LoRA) and text encoder and two fresh adapters, all initialised under ``seed``."""
        from anoplug.diffusion.finetune.lora import UNET_TARGETS, lora_config
        from anoplug.diffusion.finetune.t2i_adapter import make_t2i_adapter
        from anoplug.diffusion.tiny import seeded

        p, base = self.params, self._base()
        self.unet = copy.deepcopy(base.unet).requires_grad_(False)
        self.text_encoder = copy.deepcopy(base.text_encoder).requires_grad_(p.train_text_encoder)
        if p.resolved("unet_training") == "lora":
            with seeded(p.seed):
                self.unet.add_adapter(lora_config(UNET_TARGETS, int(p.resolved("lora_rank"))))
            for n, w in self.unet.named_parameters():
                w.requires_grad_("lora_" in n)
            self.lora = LoraLayers(self.unet)
        else:
            self.unet.requires_grad_(True)
            self.lora = None
        nrb = int(p.resolved("adapter_res_blocks"))
        self.mask_adapter = make_t2i_adapter(self.unet, vae_factor=base.vae_factor, in_channels=1, num_res_blocks=nrb,
                                             seed=p.seed + 1)
        self.image_adapter = make_t2i_adapter(self.unet, vae_factor=base.vae_factor, in_channels=1,
                                              num_res_blocks=nrb, seed=p.seed + 2)

    def modules(self) -> dict[str, nn.Module]:
        if self.unet is None:
            return {}
        unet = {"unet_lora": self.lora} if self.lora is not None else {"unet": self.unet}
        text = {"text_encoder": self.text_encoder} if self.params.train_text_encoder else {}
        return {**unet, **text, "mask_adapter": self.mask_adapter, "image_adapter": self.image_adapter}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {} if self.class_object_mask is None else {"object_mask": self.class_object_mask}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.class_object_mask = tensors["object_mask"].float()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "types": list(self.types), "type_tokens": dict(self.type_tokens)}

    def restore_config(self, config: dict[str, Any]) -> None:
        self.types = list(config.get("types", []))
        self.type_tokens = dict(config.get("type_tokens", {}))
        self._make_modules()

    def train_mode(self, training: bool) -> None:
        for m in self.modules().values():
            m.train(training)
        if self.unet is not None:
            self.unet.train(False)  # no dropout in the UNet; keep peft/diffusers in eval except while stepping

    # -- 1.–2. training data: type tokens, prompts, object mask, latents ----------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Tokens per type (sorted), the class object mask, and every latent the joint loss needs, encoded once."""
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies (images, masks and defect labels)")
        if any(lab == GOOD or not bool(anomalies.mask[i].any()) for i, lab in enumerate(anomalies.label)):
            raise ValueError(f"{self.name}.fit: every anomaly needs a non-empty mask and a defect label (not 'good')")
        p = self.params
        self.type_tokens = assign_type_tokens(anomalies.label)
        self.types = sorted(self.type_tokens)
        self._make_modules()
        size = self._size()
        base = self._base()

        def fit_size(x: torch.Tensor, mode: str) -> torch.Tensor:
            if mode == "nearest":
                return F.interpolate(x.float(), size=(size, size), mode="nearest")
            return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)

        # 2. the object mask: the first normal's, else all ones (official: U²-Net of the first normal / white mask)
        if normals is not None and len(normals) and normals.object_mask is not None:
            obj = fit_size(normals.object_mask[:1], "nearest")
        else:
            obj = torch.ones(1, 1, size, size)
        self.class_object_mask = obj.clone()
        # 1. anomaly items and up to num_normals normal items (black masks, "a photo of sks")
        img = fit_size(anomalies.image, "bilinear")
        am = (fit_size(anomalies.mask, "nearest") > 0.5).float()
        n_norm = 0 if normals is None else min(len(normals), p.num_normals)
        with torch.no_grad():
            z_img = base.encode_image(img)
            z_mask = base.encode_image(mask_to_vae_input(am))
            z_norm = base.encode_image(fit_size(normals.image, "bilinear")) if n_norm else z_img[:0]
            z_black = base.encode_image(mask_to_vae_input(torch.zeros(1, 1, size, size)))
        prompts = [mask_prompt(self.type_tokens[lab]) for lab in anomalies.label]
        return {"z_img": z_img, "z_mask": z_mask, "anomaly_mask": am, "mask_prompts": prompts, "z_norm": z_norm,
                "n_norm": n_norm, "z_black": z_black, "object_mask": obj}

    def planned_steps(self, steps: int | None, data: Any) -> int:
        return int(self.params.resolved("fit_steps")) if steps is None else int(steps)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One AdamW (constant lr, weight decay 1e-2) on UNet (or its LoRA), text encoder and both adapters."""
        from anoplug.diffusion.finetune.common import ADAM_WEIGHT_DECAY

        params = [w for m in self.modules().values() for w in m.parameters() if w.requires_grad]
        return {"anodapter": torch.optim.AdamW(params, lr=float(self.params.resolved("lr")), betas=(0.9, 0.999),
                                               eps=1e-8, weight_decay=ADAM_WEIGHT_DECAY)}

    # -- 3.–4. the joint loss -----------------------------------------------------------------------
    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> dict[str, Any]:
        """Draw ``batch_size`` items of the official dataset (anomalies, then the normal slots), then the joint loss."""
        p = self.params
        n_anom, n_norm = len(data["z_img"]), data["n_norm"]
        idx = torch.randint(0, n_anom + n_norm, (p.batch_size,), generator=generator).tolist()
        # a normal slot shows a random normal image (official: random.sample of the normals per item)
        norm = [int(torch.randint(0, len(data["z_norm"]), (1,), generator=generator)) if i >= n_anom else -1 for i in idx]
        size = data["anomaly_mask"].shape[-1]
        zi, zm, am, mp = [], [], [], []
        for i, j in zip(idx, norm):
            if i < n_anom:
                zi.append(data["z_img"][i])
                zm.append(data["z_mask"][i])
                am.append(data["anomaly_mask"][i])
                mp.append(data["mask_prompts"][i])
            else:
                zi.append(data["z_norm"][j])
                zm.append(data["z_black"][0])
                am.append(torch.zeros(1, size, size))
                mp.append(mask_prompt(None))
        z_img, z_mask, anomaly_mask = torch.stack(zi), torch.stack(zm), torch.stack(am)
        obj = data["object_mask"].expand(len(idx), -1, -1, -1)
        parts = self.parts
        prompts = [IMAGE_PROMPT] * len(idx) + mp

        def text() -> torch.Tensor:
            with torch.set_grad_enabled(p.train_text_encoder):
                return parts.encode_text(prompts)

        return joint_loss(parts.unet, parts.scheduler, z_img, z_mask,
                          lambda: adapter_residuals(self.image_adapter, self.mask_adapter, anomaly_mask, obj), text,
                          generator=generator, mask_weight=p.mask_weight)

    # -- generation: what each sample draws ---------------------------------------------------------
    def _type_for(self, i: int, batch: Batch, g: torch.Generator) -> str:
        wanted = self.params.defect_type or (batch.conditions.defect_type[i] if batch.conditions.defect_type else "")
        if wanted:
            if wanted not in self.type_tokens:
                raise ConditionError(f"conditions.defect_type {wanted!r} was not fitted; known: {self.types}")
            return wanted
        return self.types[int(torch.randint(0, len(self.types), (1,), generator=g))]

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the anomaly type (given, or drawn). The two stages' noise comes next from the same rng."""
        if not self.is_fitted or not self.types:
            raise NotFittedError(f"{self.name} is not fitted: call fit() or load()")
        return Samples({"anomaly_type": self._type_for(i, batch, g)} for i, g in enumerate(rngs))

    def _object_hint(self, batch: Batch, size: int) -> torch.Tensor:
        n = len(batch)
        if self.params.object_mask == "batch" and batch.object_mask is not None:
            return F.interpolate(batch.object_mask.float(), size=(size, size), mode="nearest")
        if self.class_object_mask is None:
            return torch.ones(n, 1, size, size)
        return F.interpolate(self.class_object_mask, size=(size, size), mode="nearest").expand(n, -1, -1, -1)

    def _denoise(self, adapter: nn.Module, hint: torch.Tensor, prompts: list[str],
                 rngs: Sequence[torch.Generator]) -> torch.Tensor:
        """One adapter-pipeline run: DDIM (η 0) with CFG against "", the adapter's features on both halves."""
        from anoplug.diffusion.finetune.t2i_adapter import AdaptedModel
        from anoplug.diffusion.sampling import ClassifierFreeGuidance, sample

        p, parts = self.params, self.parts
        n = len(prompts)
        lat = self._size() // parts.vae_factor
        model = AdaptedModel(parts.unet, adapter, hint.to(parts.device), scale=p.adapter_scale)
        cond = parts.encode_text(prompts)
        hooks = [ClassifierFreeGuidance(parts.encode_text([""] * n), p.guidance, batched=True)] if p.guidance > 1 else []
        z = sample(model, parts.scheduler, shape=(n, parts.unet.config.in_channels, lat, lat), rngs=rngs,
                   num_steps=int(p.resolved("steps")), eta=0.0, cond=cond, device=parts.device, hooks=hooks)
        return parts.decode(z)

    @torch.no_grad()
    def stage1_mask(self, types: Sequence[str], object_hint: torch.Tensor,
                    rngs: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: (mask image in [0,1], its binarisation > ``mask_threshold``) under "a photo of sks with {token}"."""
        image = self._denoise(self.mask_adapter, object_hint, [mask_prompt(self.type_tokens[t]) for t in types], rngs)
        return image, binarise_mask_image(image, self.params.mask_threshold)

    @torch.no_grad()
    def stage2_image(self, anomaly_mask: torch.Tensor, rngs: Sequence[torch.Generator]) -> torch.Tensor:
        """Stage 2: the anomaly image under "a photo of dqd" with the image adapter on ``anomaly_mask``."""
        return self._denoise(self.image_adapter, anomaly_mask, [IMAGE_PROMPT] * len(anomaly_mask), rngs)

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Type per sample, stage 1 (unless ``conditions.target_mask``), stage 2 on that mask; both at the working size.

        Draw order per sample rng: type, stage-1 start noise (skipped with a target mask),
        stage-2 start noise. The returned mask is the stage-1 mask resized (nearest) to the
        batch's size — the very mask stage 2 was conditioned on.
        """
        drawn = self.sample(batch, rngs)
        if samples is not None:
            for i, s in enumerate(samples):
                if not isinstance(s, dict) or s.get("anomaly_type") not in self.type_tokens:
                    raise ValueError(f"samples[{i}]['anomaly_type'] was not fitted; known: {self.types}")
            drawn = Samples({"anomaly_type": s["anomaly_type"]} for s in samples)
        types = [s["anomaly_type"] for s in drawn]
        size = self._size()
        h, w = batch.size
        target = batch.conditions.target_mask
        if target is None:
            _, work_mask = self.stage1_mask(types, self._object_hint(batch, size), rngs)
            out_mask = F.interpolate(work_mask, size=(h, w), mode="nearest")
        else:
            work_mask = F.interpolate(target, size=(size, size), mode="nearest")
            out_mask = target.clone()
        image = self.stage2_image(work_mask, rngs)
        if (h, w) != (size, size):
            image = F.interpolate(image, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
        labels = [t if bool(out_mask[i].any()) else GOOD for i, t in enumerate(types)]
        meta = [{**m, "type_token": self.type_tokens[t]} for m, t in zip(batch.meta, types)]
        out = Batch(image=image.float().contiguous(), mask=out_mask.float().contiguous(), label=labels, meta=meta,
                    object_mask=batch.object_mask, depth=batch.depth, text=batch.text)
        return out, drawn
