"""AnomalyControl (He, Liu, Shu, Wang, Feng, Zhao; arXiv 2412.06510): a reference anomaly and its caption, painted in.

A reference anomaly image, its mask and its caption become one cross-modal semantic vector,
which an IP-Adapter-style adapter injects into a frozen *inpainting* UNet that paints the
defect into a target mask on a normal image. The steps, as the official code
(``DaniellaHe/AnomalyControl``: ``train_anoctrl.py``, ``datasets.py``, ``inference_fast.py``,
``ano_csm/models/blip2_models/blip2_qformer.py``) runs them:

1. **CSM** (:mod:`~anoplug_anomalycontrol.csm`): a frozen BLIP-2 Q-Former reads the reference
   image and caption ("multimodal" mode); the query states are averaged into one vector.
2. **ASEA** (:mod:`~anoplug_anomalycontrol.asea`): a visual prompt on the ViT tokens, 5 Adam
   steps (lr 0.1) so the Q-Former's cross-attention mass moves into the reference mask; the
   features of the last forward pass are used.
3. **SGA** (:mod:`~anoplug_anomalycontrol.sga`): Linear → ``ImageProjModel`` → 4 tokens, decoupled
   cross-attention ``to_k_ip/to_v_ip`` at scale 0.5 in training, 1.0 at inference.
4. **Training**: each anomaly is its own reference; the UNet input is
   ``[noisy latent, mask (nearest), latent of image·(mask < 0.5)]``; ε-MSE over the whole latent;
   AdamW 1e-4, wd 0.01, batch 8, gradient accumulation 2; 5 % image / 5 % text / 5 % both dropped.
   Only the two projections and ``to_k_ip/to_v_ip`` train.
5. **Inference**: inpainting with strength 0.7, 50 steps (SD-inpainting's PNDM), CFG 7 against the
   negative prompt and ``proj(zeros)``, the reference caption as the target prompt.
6. **Composite**: the output over the normal image with the target mask Gaussian-blurred (σ = 5 px
   at 512 px); the output mask is the target mask.

Offline it runs on the committed tiny inpainting base (64 px, 9-channel UNet) and a tiny random
Q-Former stored with the weights. Real path: ``base_model`` = a local SD-inpainting directory,
``qformer`` = a local BLIP-2 ``Blip2ForImageTextRetrieval`` directory, ``proj_dim`` 1024 and
optionally ``ip_adapter_init`` = a released IP-Adapter SD1.5 safetensors (the official init).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import Batch
from anoplug_anomalycontrol.asea import ASEAResult, in_mask_fraction, run_asea
from anoplug_anomalycontrol.csm import CSM
from anoplug_anomalycontrol.sga import INFERENCE_SCALE, SGA, TRAIN_SCALE, install_sga

DEFAULT_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
DEFAULT_CAPTION = "an anomaly"
#: the resolution at which the official σ = 5 px composite blur is defined
BLUR_REFERENCE_SIZE = 512

#: CPU scale-downs of the same code; "paper" is the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"fit_steps": 600, "lr": 1e-3, "grad_accumulation": 1, "proj_dim": 64, "steps": 20},
}


_BASES: dict[str, Any] = {}


def _base(name: str) -> Any:
    """The frozen inpainting pipeline's parts, loaded once per process."""
    if name not in _BASES:
        from anoplug.diffusion.loading import Parts, load_pipeline

        pipe = load_pipeline(name, scheduler="pndm")
        if int(pipe.unet.config.in_channels) != 9:
            raise ValueError(f"{name} is not an inpainting model (its UNet has {pipe.unet.config.in_channels} input "
                             "channels, not 9)")
        _BASES[name] = Parts.from_pipeline(pipe).freeze()
    return _BASES[name]


class AnomalyControlParams(Params):
    base_model: str = Field("tiny-inpaint", description="inpainting base: 'tiny-inpaint' or a local SD-inpainting dir")
    qformer: str = Field("tiny", description="'tiny' (random, stored with the weights) or a local BLIP-2 ITM dir")
    proj_dim: int = Field(1024, ge=1, le=8192, description="BlipProjModel output = ImageProjModel input (CLIP-H 1024)")
    ip_adapter_init: str = Field("", description="IP-Adapter safetensors to initialise the SGA from ('' = random)")
    lr: float = Field(1e-4, gt=0, le=1.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-2, ge=0, le=1.0, description="AdamW weight decay")
    batch_size: int = Field(8, ge=1, le=256, description="training batch size")
    grad_accumulation: int = Field(2, ge=1, le=64, description="gradient accumulation steps")
    fit_steps: int = Field(200_000, ge=1, le=10_000_000, description="training steps (official checkpoint 200k)")
    drop_image: float = Field(0.05, ge=0, le=1, description="probability the semantic vector is zeroed")
    drop_text: float = Field(0.05, ge=0, le=1, description="probability the caption is emptied")
    drop_both: float = Field(0.05, ge=0, le=1, description="probability both are dropped")
    use_ref_mask: bool = Field(True, description="run ASEA with the reference mask (official --use_mask)")
    asea_steps: int = Field(5, ge=0, le=100, description="Adam steps on the visual prompt (0 = no ASEA)")
    asea_lr: float = Field(0.1, gt=0, le=10, description="ASEA Adam learning rate")
    train_scale: float = Field(TRAIN_SCALE, ge=0, le=5, description="SGA scale during training")
    sga_scale: float = Field(INFERENCE_SCALE, ge=0, le=5, description="SGA scale at inference")
    steps: int = Field(50, ge=1, le=1000, description="scheduler steps before strength truncation")
    strength: float = Field(0.7, gt=0, le=1, description="inpainting strength")
    guidance: float = Field(7.0, ge=1, le=30, description="classifier-free guidance scale")
    scheduler: Literal["pndm", "ddim"] = Field("pndm", description="SD-inpainting's default PNDM, or DDIM")
    negative_prompt: str = Field(DEFAULT_NEGATIVE, description="negative prompt of CFG")
    caption: str = Field(DEFAULT_CAPTION, description="reference caption when neither captions nor prompts are given")
    blur_sigma: float = Field(5.0, ge=0, le=50, description="composite blur σ in px at 512 px (scaled to the output)")
    bank_size: int = Field(24, ge=1, le=256, description="fit anomalies kept as references for unconditioned calls")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the weight init and of fit's draws")


class AnomalyControl(LearnedGenerator):
    """Fit the SGA on anomalies with masks and captions, then paint a reference's defect into a target mask.

    Conditions: ``references`` + ``reference_masks`` (else a reference from the fit bank),
    ``reference_captions`` (else ``prompt``, else the bank caption), ``target_mask`` (else the
    reference's mask), ``prompt`` (the target prompt; else the reference caption, as the script).
    """

    name = "anomalycontrol"
    title = ("AnomalyControl (He et al.): reference anomaly + caption as Q-Former semantics, steered by ASEA, "
             "injected by SGA into an inpainting UNet")
    category = "multimodal-text-image"
    tags = ("mask",)
    paper = Paper("AnomalyControl: Learning Cross-modal Semantic Features for Controllable Anomaly Synthesis",
                  "arXiv", 2024, "https://arxiv.org/abs/2412.06510", "https://github.com/DaniellaHe/AnomalyControl")
    Params = AnomalyControlParams
    requires = Requires(fit=True, anomalies=True, weights="SD-inpainting + BLIP-2 (offline: tiny-inpaint + tiny Q-Former)",
                        accepts=("target_mask", "prompt", "references", "reference_masks",
                                 "reference_captions"))
    generation_params = ("use_ref_mask", "asea_steps", "asea_lr", "sga_scale", "steps", "strength", "guidance",
                         "scheduler", "negative_prompt", "caption", "blur_sigma")
    pretrained: ClassVar[dict[str, str]] = {"toy-defects": "weights/toy-defects"}
    smoke_params: ClassVar[dict[str, Any]] = {"steps": 4}
    preserves_outside_mask = False  # the blurred composite reaches a few pixels past the mask (by design)

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.gradient_accumulation_steps = int(self.params.grad_accumulation)
        self.unet: Any = None
        self.csm: CSM | None = None
        self.sga: SGA | None = None
        self.bank: dict[str, Any] | None = None
        self.history: list[dict] = []
        self.last_asea: ASEAResult | None = None  # the latest generate's ASEA (for plots)

    # -- the modules --------------------------------------------------------------------------------
    @property
    def parts(self) -> Any:
        return _base(self.params.base_model)

    def _build_modules(self) -> None:
        p = self.params
        parts = self.parts
        if p.qformer == "tiny":
            from anoplug_anomalycontrol.csm import tiny_blip2

            self.csm = CSM(tiny_blip2(len(parts.tokenizer), seed=p.seed), parts.tokenizer)
        else:
            from anoplug_anomalycontrol.csm import load_blip2

            self.csm = CSM(*load_blip2(p.qformer))
        self.unet, self.sga = install_sga(parts.unet, qformer_hidden=self.csm.hidden_size, proj_dim=p.proj_dim,
                                          seed=p.seed + 2)
        if p.ip_adapter_init:
            from anoplug.diffusion.finetune.ip_adapter import load_ip_adapter_weights

            load_ip_adapter_weights(self.sga.adapter, p.ip_adapter_init)

    def modules(self) -> dict[str, nn.Module]:
        if self.sga is None:
            return {}
        mods: dict[str, nn.Module] = {"sga": self.sga}
        if self.params.qformer == "tiny":  # a real BLIP-2 is read from its directory, never copied
            mods["csm"] = self.csm.model
        return mods

    def train_mode(self, training: bool) -> None:
        if self.sga is not None:
            self.sga.train(training)
        if self.csm is not None:
            self.csm.eval()  # frozen, always evaluated

    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.bank is None:
            return {}
        return {"bank_images": (self.bank["images"] * 255).round().to(torch.uint8),
                "bank_masks": self.bank["masks"].to(torch.uint8)}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        info = getattr(self, "_bank_info", None) or {k: self.bank[k] for k in ("captions", "defects")}
        self.bank = {"images": tensors["bank_images"].float() / 255, "masks": tensors["bank_masks"].float(), **info}

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if self.bank is not None:
            cfg["bank"] = {"captions": self.bank["captions"], "defects": self.bank["defects"]}
        return cfg

    def restore_config(self, config: dict[str, Any]) -> None:
        self._bank_info = config.get("bank", {"captions": [], "defects": []})
        self._build_modules()

    # -- shared helpers -----------------------------------------------------------------------------
    def _work_size(self) -> int:
        return int(self.unet.config.sample_size) * self.parts.vae_factor

    def _resize(self, x: torch.Tensor, size: int, mask: bool = False) -> torch.Tensor:
        if mask:
            return (F.interpolate(x.float(), size=(size, size), mode="nearest") > 0.5).float()
        return F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)

    def semantics(self, refs: torch.Tensor, rmasks: torch.Tensor, captions: list[str]) -> ASEAResult:
        """Steps 1–2: CSM features of each reference, steered by ASEA when ``use_ref_mask``."""
        p = self.params
        steps = p.asea_steps if p.use_ref_mask else 0
        return run_asea(self.csm, refs, rmasks, list(captions), steps=steps, lr=p.asea_lr, seed=p.seed)

    def _inpaint_inputs(self, img: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z0, latent mask, masked-image latent)``: mask nearest to the latent grid, image·(mask < 0.5)."""
        parts = self.parts
        z0 = parts.encode_image(img)
        masked = parts.encode_image(img * (mask < 0.5).float())
        lat_mask = F.interpolate(mask.float(), size=z0.shape[-2:], mode="nearest")
        return z0, lat_mask, masked

    def _model(self, lat_mask: torch.Tensor, masked: torch.Tensor) -> Any:
        """``(x_t, t, context) -> ε`` of the 9-channel UNet; the mask inputs tile over CFG's stacked halves."""
        unet = self.unet

        def model(x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
            reps = x.shape[0] // lat_mask.shape[0]
            inp = torch.cat([x, lat_mask.repeat(reps, 1, 1, 1), masked.repeat(reps, 1, 1, 1)], 1)
            return unet(inp, t, encoder_hidden_states=encoder_hidden_states).sample

        return model

    # -- 4. training --------------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        if anomalies is None or not bool(anomalies.mask.any()):
            raise ValueError(f"{self.name}.fit needs anomalies with masks (each is its own reference)")
        keep = [i for i in range(len(anomalies)) if bool(anomalies.mask[i].any())]
        self._build_modules()
        size = self._work_size()
        img = self._resize(anomalies.image[keep], size)
        msk = self._resize(anomalies.mask[keep], size, mask=True)
        texts = anomalies.text or [None] * len(anomalies)
        cats = [str(m.get("category", "")) for m in anomalies.meta]
        captions = [texts[i] or f"{anomalies.label[i].replace('_', ' ')} on {cats[i] or 'the product'}" for i in keep]
        nb = min(self.params.bank_size, len(keep))
        self.bank = {"images": img[:nb].clone(), "masks": msk[:nb].clone(), "captions": captions[:nb],
                     "defects": [anomalies.label[i] for i in keep[:nb]]}
        with torch.no_grad():
            z0, lat_mask, masked = self._inpaint_inputs(img, msk)
            text = self.parts.encode_text(captions)
            empty = self.parts.encode_text([""])
        pooled = self.semantics(img, msk, captions).output.pooled  # the official per-file feature cache
        return {"z0": z0, "mask": lat_mask, "masked": masked, "text": text, "empty": empty, "pooled": pooled}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [q for q in self.sga.parameters() if q.requires_grad]
        return {"sga": torch.optim.AdamW(params, lr=self.params.lr, weight_decay=self.params.weight_decay)}

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> torch.Tensor:
        from anoplug.diffusion.finetune.common import noise_prediction_loss

        p = self.params
        idx = torch.randint(0, len(data["z0"]), (p.batch_size,), generator=generator)
        u = torch.rand(p.batch_size, generator=generator)
        a, b, c = p.drop_image, p.drop_image + p.drop_text, p.drop_image + p.drop_text + p.drop_both
        no_image = (u < a) | ((u >= b) & (u < c))  # datasets.py: image, then text, then both
        no_text = (u >= a) & (u < c)
        self.sga.set_scale(p.train_scale)

        def context() -> torch.Tensor:
            pooled = torch.where(no_image[:, None], torch.zeros_like(data["pooled"][idx]), data["pooled"][idx])
            text = torch.where(no_text[:, None, None], data["empty"].expand_as(data["text"][idx]), data["text"][idx])
            return self.sga.context(text, pooled)

        model = self._model(data["mask"][idx], data["masked"][idx])
        return noise_prediction_loss(model, self.parts.scheduler, data["z0"][idx], context, generator=generator)

    # -- sampling: every choice per sample ----------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: which reference (one of the K given, or one of the fit bank)."""
        if self.sga is None or self.bank is None:
            raise NotFittedError(f"{self.name} must be fitted or loaded first")
        c = batch.conditions
        out = Samples()
        for g in rngs:
            if c.references is not None:
                k = int(torch.randint(0, c.references.shape[1], (1,), generator=g))
                out.append({"reference": k, "reference_source": "given"})
            else:
                k = int(torch.randint(0, len(self.bank["defects"]), (1,), generator=g))
                out.append({"reference": k, "reference_source": "bank", "defect": self.bank["defects"][k]})
        return out

    def _references(self, batch: Batch, samples: Samples) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """The chosen reference image, mask and caption of each sample (caption: reference_captions → prompt → bank)."""
        c = batch.conditions
        n = len(batch)
        caps = c.reference_captions  # per sample, K captions aligned with references
        if c.references is not None:
            ks = [s["reference"] for s in samples]
            refs = torch.stack([c.references[i, k] for i, k in enumerate(ks)])
            rm = (torch.stack([c.reference_masks[i, k] for i, k in enumerate(ks)]) if c.reference_masks is not None
                  else torch.ones(n, 1, *refs.shape[-2:]))
            if caps is not None:
                captions = [caps[i][k] for i, k in enumerate(ks)]
            elif c.prompt is not None:
                captions = list(c.prompt)
            else:
                captions = [self.params.caption] * n
        else:
            ks = [s["reference"] for s in samples]
            refs, rm = self.bank["images"][ks], self.bank["masks"][ks]
            captions = list(c.prompt) if c.prompt is not None else [self.bank["captions"][k] for k in ks]
        return refs, rm, captions

    # -- 5.–6. generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        from anoplug.diffusion.blend import per_sample_randn
        from anoplug.diffusion.img2img import Truncated, start_latent
        from anoplug.diffusion.loading import make_scheduler
        from anoplug.diffusion.sampling import ClassifierFreeGuidance, FinalComposite, sample

        p = self.params
        drawn = self.sample(batch, rngs)  # every rng advanced to where its noise starts, replay or not
        samples = drawn if samples is None else Samples(dict(s) for s in samples)
        c = batch.conditions
        n, (h, w) = len(batch), batch.size
        size = self._work_size()
        refs, rmask, captions = self._references(batch, samples)
        refs, rmask = self._resize(refs, size), self._resize(rmask, size, mask=True)
        # 1.–2. the cross-modal semantics of each reference
        asea = self.semantics(refs, rmask, captions)
        self.last_asea = asea
        pooled = asea.output.pooled
        # target mask: given, else the reference's own mask (our assumption; the paper uses generated masks)
        tmask = self._resize(c.target_mask if c.target_mask is not None else rmask, size, mask=True)
        src = self._resize(batch.image, size)
        z0, lat_mask, masked = self._inpaint_inputs(src, tmask)
        # 3. the context: target prompt (given, else the reference caption) + SG tokens; uncond = proj(zeros)
        prompts = list(c.prompt) if c.prompt is not None else captions
        cond = self.sga.context(self.parts.encode_text(prompts), pooled)
        uncond = self.sga.context(self.parts.encode_text([p.negative_prompt] * n), torch.zeros_like(pooled))
        self.sga.set_scale(p.sga_scale)
        # 5. inpainting at strength 0.7 from the noised source latent
        sched = make_scheduler(p.scheduler)
        noise = per_sample_randn(z0.shape[1:], rngs, z0.device)
        x = start_latent(sched, z0, noise, p.steps, p.strength)
        hooks = [ClassifierFreeGuidance(uncond, p.guidance, batched=True)] if p.guidance > 1 else []
        z = sample(self._model(lat_mask, masked), Truncated(sched, p.strength), x, rngs=rngs, num_steps=p.steps,
                   cond=cond, hooks=hooks)
        gen = self.parts.decode(z)
        # 6. the blurred composite at the output resolution (σ scaled from 512 px)
        if (h, w) != (size, size):
            gen = F.interpolate(gen, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
        out_mask = (F.interpolate(tmask, size=(h, w), mode="nearest") > 0.5).float()
        sigma = p.blur_sigma * max(h, w) / BLUR_REFERENCE_SIZE
        image = FinalComposite(batch.image.float(), out_mask, sigma).finish(None, gen).clamp(0, 1)  # type: ignore[arg-type]
        frac = [round(float(v), 6) for v in in_mask_fraction(asea.output.attention, self.csm.grid_mask(rmask))]
        samples = Samples({**s, "caption": cap, "asea_in_mask_fraction": f} for s, cap, f in zip(samples, captions, frac))
        labels = [s.get("defect", "anomaly") if bool(out_mask[i].any()) else "good" for i, s in enumerate(samples)]
        meta = [dict(m) for m in batch.meta]
        result = Batch(image=image.float().contiguous(), mask=out_mask.contiguous(), label=labels, meta=meta,
                       object_mask=batch.object_mask, depth=batch.depth, text=batch.text)
        return result, samples
