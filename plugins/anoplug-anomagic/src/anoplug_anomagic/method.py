"""Anomagic (Jiang et al., AAAI 2026, arXiv 2511.10020): zero-shot defects from a reference anomaly of *another* product.

A frozen text-to-image latent diffusion model paints a defect into a normal image of the
target product, guided by an image prompt made from a reference anomaly of other products,
then the mask is refined by contrasting the result with its source. The steps, as the
official code (``yuxin-jiang/Anomagic``, ``Anomagic_train.py`` / ``Anomagic_test.py``) runs them:

1. **Visual prompt.** The reference image's encoder tokens (first P of P+1 last-hidden-state
   tokens, reshaped to a √P×√P grid) pass the mask-restricted self-attention
   (:class:`~anoplug_anomagic.modules.MaskedSelfAttention`: keys outside the reference anomaly
   mask get −1e6), then ``Linear(C → D)``.
2. **Conditioning.** IP-Adapter's projection on every grid token → 4·P image tokens; the prompt's
   text states mean-pooled into one token; context ``[1 text token ; 4·P image tokens]``. The IP
   processors (``to_k_ip/to_v_ip``) see only the *last 4* tokens (quirk reproduced). LoRA r = 16
   on every attention projection. Trained: attention block, projection, ``to_k_ip/to_v_ip``,
   LoRA, with the noise MSE *inside the anomaly mask only* (AdamW 1e-4, wd 1e-2, batch 8,
   text / image / both dropped with p = 0.05 — the image drop has no effect in the official
   code, reproduced, ``image_dropout_applied`` switches it on).
3. **Reference retrieval** from a cross-product corpus, the target's category held out
   (:mod:`~anoplug_anomagic.retrieval`).
4. **Legacy inpaint loop** (:mod:`~anoplug_anomagic.inpaint`): img2img at strength 0.6 with the
   known region re-noised and pasted each step; DPM-Solver++ 20 steps, CFG 7.5 against the
   negative prompt and the projection of zero features, IP scale 0.6, fixed prompt "best
   quality, high quality" (the reference caption is commented out in the official code).
5. **Target masks** as ``creatMask.py`` (:mod:`~anoplug_anomagic.masks`), unless
   ``conditions.target_mask`` gives them.
6. **Contrastive mask refinement** (:mod:`~anoplug_anomagic.refine`): change map vs the source,
   AND the input mask; accept at quality ≥ 0.7 and coverage ≥ 0.001, else retry, up to
   ``max_attempts``.

Offline it runs on the committed tiny base (64 px, 16×16 latents) and the tiny CLIP image
encoder (8×8 grid + class token, so 64 grid tokens → 256 image tokens).
Real path: ``base_model`` = a local SD-1.5 directory, ``image_encoder`` = a local CLIP ViT-H/14
image-encoder directory (the IP-Adapter SD1.5 one); the released ``anomagic.bin`` is a pickle and
is not loaded here (convert it to safetensors first).
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
from anoplug.types import GOOD, Batch
from anoplug_anomagic.modules import (
    LoraLayers,
    MaskedSelfAttention,
    grid_tokens,
    image_tokens,
    install_adapters,
    pooled_text,
)
from anoplug_anomagic.retrieval import Corpus, Retriever, toy_corpus

DEFAULT_PROMPT = "best quality, high quality"
DEFAULT_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"

#: CPU scale-downs of the same code (``Anomagic(**PRESETS["cpu"], ...)``); "paper" is the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"fit_steps": 900, "lr": 1e-3, "batch_size": 8, "max_attempts": 4, "steps": 20},
}

_PIPES: dict[str, Any] = {}


def _base(name: str) -> Any:
    if name not in _PIPES:
        from anoplug.diffusion.loading import Parts, load_pipeline

        _PIPES[name] = Parts.from_pipeline(load_pipeline(name)).freeze()
    return _PIPES[name]


_ENCODERS: dict[str, Any] = {}


def _encoder(name: str) -> Any:
    if name not in _ENCODERS:
        from anoplug.diffusion.finetune.ip_adapter import load_image_encoder

        _ENCODERS[name] = load_image_encoder(name)
    return _ENCODERS[name]


class AnomagicParams(Params):
    base_model: str = Field("tiny-base", description="text-to-image base: 'tiny-base' (offline) or a local SD-1.5 dir")
    image_encoder: str = Field("auto", description="'auto' / 'tiny-clip' / 'random' or a local CLIP image-encoder dir")
    lora_rank: int = Field(16, ge=1, le=256, description="LoRA rank on the UNet attention (paper: 16)")
    lora_alpha: float = Field(16.0, gt=0, le=1024, description="LoRA alpha (paper: 16)")
    num_ip_tokens: int = Field(4, ge=1, le=4096, description="tokens the IP processors take from the end (official 4)")
    lr: float = Field(1e-4, gt=0, le=1.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-2, ge=0, le=1.0, description="AdamW weight decay")
    batch_size: int = Field(8, ge=1, le=256, description="training batch size")
    fit_steps: int = Field(10_000, ge=1, le=1_000_000, description="training steps")
    drop_text: float = Field(0.05, ge=0, le=1, description="probability the caption is emptied")
    drop_image: float = Field(0.05, ge=0, le=1, description="probability the image prompt is dropped")
    drop_both: float = Field(0.05, ge=0, le=1, description="probability both are dropped")
    image_dropout_applied: bool = Field(False, description="actually zero dropped image prompts (official: computed, unused)")
    holdout: list[str] = Field(default_factory=list, description="categories whose defects never enter training/retrieval")
    corpus: Literal["fit", "toy"] = Field("fit", description="retrieval corpus: fit's anomalies, or the toy defects")
    toy_corpus_length: int = Field(24, ge=1, le=192, description="toy test items per category in the 'toy' corpus")
    max_objects: int = Field(3, ge=1, le=100, description="similar objects retrieval draws from (official 3)")
    defect_type: str = Field("", description="defect to transfer when conditions.defect_type is absent ('' = drawn)")
    prompt: str = Field(DEFAULT_PROMPT, description="text prompt when conditions.prompt is absent (official fixed)")
    negative_prompt: str = Field(DEFAULT_NEGATIVE, description="negative prompt of CFG")
    steps: int = Field(20, ge=1, le=1000, description="scheduler steps before strength truncation")
    strength: float = Field(0.6, gt=0, le=1, description="img2img strength of the legacy inpaint loop")
    guidance: float = Field(7.5, ge=1, le=30, description="classifier-free guidance scale")
    ip_scale: float = Field(0.6, ge=0, le=5, description="IP branch scale at inference")
    scheduler: Literal["dpm", "ddim"] = Field("dpm", description="DPM-Solver multistep (official) or DDIM")
    max_attempts: int = Field(100, ge=1, le=1000, description="attempts of the acceptance rule")
    min_quality: float = Field(0.7, ge=0, le=1, description="accept when 1 - flagged fraction >= this")
    min_coverage: float = Field(0.001, ge=0, le=1, description="accept when refined-mask fraction >= this")
    contrast_backbone: Literal["vgg16", "pixel"] = Field("vgg16", description="change-map backbone (MetaUAS stand-in)")
    contrast_threshold: float | None = Field(None, gt=0, le=10, description="change-map value above which a pixel is "
                                             "flagged (None: the backbone's calibrated value, vgg16 0.25, pixel 0.03)")
    known_region: bool = Field(True, description="re-noise and paste the known region each step (legacy loop)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the weight init and of fit's draws")


class Anomagic(LearnedGenerator):
    """Fit on anomalies of other products (``fit(normals, anomalies)``), then paint their defects on a new product.

    Conditions: ``target_mask`` (else creatMask draws one), ``defect_type`` (the defect to
    transfer), ``prompt``, ``references`` + ``reference_masks`` (a given reference instead of
    retrieval).
    """

    name = "anomagic"
    title = "Anomagic: zero-shot cross-product defects from a masked reference image prompt, with contrastive mask refinement"
    category = "multimodal-text-image"
    tags = ("mask",)
    paper = Paper("Anomagic: Crossmodal Prompt-driven Zero-shot Anomaly Generation", "AAAI", 2026,
                  "https://arxiv.org/abs/2511.10020", "https://github.com/yuxin-jiang/Anomagic")
    Params = AnomagicParams
    requires = Requires(fit=True, anomalies=True, weights="SD-1.5 + CLIP ViT-H/14 (offline: tiny-base + tiny CLIP)",
                        accepts=("target_mask", "defect_type", "prompt", "references", "reference_masks"))
    generation_params = ("defect_type", "prompt", "negative_prompt", "steps", "strength", "guidance", "ip_scale",
                         "scheduler", "max_attempts", "min_quality", "min_coverage", "contrast_backbone",
                         "contrast_threshold", "known_region", "max_objects", "toy_corpus_length")
    pretrained: ClassVar[dict[str, str]] = {"toy-holdout-nut": "weights/toy-holdout-nut"}
    smoke_params: ClassVar[dict[str, Any]] = {"steps": 4, "max_attempts": 1}
    preserves_outside_mask = False  # the legacy pipeline decodes the whole latent (VAE error outside the mask)

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.parts: Any = None
        self.attention: MaskedSelfAttention | None = None
        self.adapter: Any = None
        self.lora: LoraLayers | None = None
        self.fit_corpus: Corpus | None = None
        self._retriever: Retriever | None = None
        self.history: list[dict] = []

    # -- the modules ------------------------------------------------------------------------------
    def _encoder(self) -> Any:
        return _encoder(self.params.image_encoder)

    def _build_modules(self) -> None:
        enc = self._encoder()
        cfg = enc.config
        base = _base(self.params.base_model)
        self.parts, self.adapter, self.lora = install_adapters(
            base, image_embed_dim=int(cfg.projection_dim), num_ip_tokens=self.params.num_ip_tokens,
            rank=self.params.lora_rank, alpha=self.params.lora_alpha, ip_scale=1.0, seed=self.params.seed)
        from anoplug.diffusion.tiny import seeded

        with seeded(self.params.seed + 2):
            self.attention = MaskedSelfAttention(int(cfg.hidden_size), int(cfg.projection_dim))

    def modules(self) -> dict[str, nn.Module]:
        if self.attention is None:
            return {}
        return {"attention": self.attention, "ip": self.adapter, "lora": self.lora}

    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.fit_corpus is None or self.params.corpus != "fit":
            return {}
        return {"corpus_images": (self.fit_corpus.images * 255).round().to(torch.uint8),
                "corpus_masks": self.fit_corpus.masks.to(torch.uint8)}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.params.corpus != "fit":
            return super().load_extra_state(tensors)
        info = getattr(self, "_corpus_info", None)
        if info is None and self.fit_corpus is not None:  # resuming a fit: build() made the corpus already
            c = self.fit_corpus
            info = {"defects": c.defects, "categories": c.categories, "captions": c.captions}
        self.fit_corpus = Corpus(tensors["corpus_images"].float() / 255, tensors["corpus_masks"].float(),
                                 info["defects"], info["categories"], info["captions"])

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if self.fit_corpus is not None:
            c = self.fit_corpus
            cfg["corpus"] = {"defects": c.defects, "categories": c.categories, "captions": c.captions}
        cfg["trained_categories"] = getattr(self, "trained_categories", [])
        return cfg

    def restore_config(self, config: dict[str, Any]) -> None:
        self._corpus_info = config.get("corpus", {"defects": [], "categories": [], "captions": []})
        self.trained_categories = list(config.get("trained_categories", []))
        self._build_modules()

    # -- helpers shared by training and generation --------------------------------------------------
    def _work_size(self) -> int:
        return int(self.parts.unet.config.sample_size) * self.parts.vae_factor

    def _grid(self, images01: torch.Tensor) -> torch.Tensor:
        from anoplug.zoo.clip import ClipPreprocess

        enc = self._encoder()
        size = int(enc.config.image_size)
        with torch.no_grad():
            return grid_tokens(enc, ClipPreprocess(size=size, crop=size)(images01.float()))

    def _latent_mask(self, mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Every latent cell the defect touches (official: PIL resize of the 0–255 mask, > 0.5)."""
        return (F.interpolate(mask.float(), size=tuple(size), mode="area") > 0).float()

    def _tokens(self, grid: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return image_tokens(self.adapter.image_proj, self.attention(grid, mask))

    # -- 2. training --------------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        if anomalies is None or not bool(anomalies.mask.any()):
            raise ValueError(f"{self.name}.fit needs anomalies (of other products) with masks")
        corpus = Corpus.from_batch(anomalies).without(set(self.params.holdout))
        if not len(corpus):
            raise ValueError(f"{self.name}.fit: no anomaly with a mask outside the held-out categories "
                             f"{self.params.holdout}")
        self._build_modules()
        self.fit_corpus = corpus
        self.trained_categories = sorted(set(corpus.categories))
        self._retriever = None
        size = self._work_size()
        img = F.interpolate(corpus.images, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        msk = (F.interpolate(corpus.masks, size=(size, size), mode="nearest") > 0.5).float()
        with torch.no_grad():
            z0 = torch.cat([self.parts.encode_image(img[i:i + 16]) for i in range(0, len(img), 16)])
            text = torch.cat([pooled_text(self.parts, corpus.captions[i:i + 16]) for i in range(0, len(corpus), 16)])
            empty = pooled_text(self.parts, [""])
            grid = self._grid(img)
        lat_mask = self._latent_mask(msk, z0.shape[-2:])
        return {"z0": z0, "text": text, "empty": empty, "grid": grid, "mask": lat_mask}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]
        return {"anomagic": torch.optim.AdamW(params, lr=self.params.lr, weight_decay=self.params.weight_decay)}

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> torch.Tensor:
        from anoplug.diffusion.finetune.common import noise_prediction_loss

        p = self.params
        n = len(data["z0"])
        idx = torch.randint(0, n, (p.batch_size,), generator=generator)
        u = torch.rand(p.batch_size, generator=generator)
        no_image = (u < p.drop_image) | ((u >= p.drop_image + p.drop_text) & (u < p.drop_image + p.drop_text + p.drop_both))
        no_text = (u >= p.drop_image) & (u < p.drop_image + p.drop_text + p.drop_both)
        mask = data["mask"][idx]

        def context() -> torch.Tensor:
            grid = data["grid"][idx]
            tokens = self._tokens(grid, mask)
            if p.image_dropout_applied:
                tokens = torch.where(no_image[:, None, None], self._tokens(torch.zeros_like(grid), mask), tokens)
            text = torch.where(no_text[:, None, None], data["empty"].expand_as(data["text"][idx]), data["text"][idx])
            return torch.cat([text, tokens], 1)

        # the loss only inside the anomaly mask (official: MSE × mask, mean)
        return noise_prediction_loss(self.parts.unet, self.parts.scheduler, data["z0"][idx], context,
                                     generator=generator, mask=mask)

    # -- 3. retrieval -------------------------------------------------------------------------------
    def corpus(self) -> Corpus:
        """The retrieval corpus, the held-out categories removed."""
        hold = set(self.params.holdout)
        if self.params.corpus == "toy":
            return toy_corpus(self._work_size(), self.params.toy_corpus_length, hold)
        if self.fit_corpus is None:
            raise NotFittedError(f"{self.name} has no reference corpus (fit or load first)")
        return self.fit_corpus.without(hold)

    def retriever(self) -> Retriever:
        if self._retriever is None:
            enc = self._encoder()
            from anoplug.zoo.clip import ClipPreprocess

            size = int(enc.config.image_size)

            def image_embed(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return enc(pixel_values=ClipPreprocess(size=size, crop=size)(x.float())).image_embeds

            def text_embed(names: list[str]) -> torch.Tensor:
                with torch.no_grad():
                    return pooled_text(self.parts, [n.replace("_", " ") for n in names])[:, 0]

            self._retriever = Retriever(self.corpus(), image_embed, text_embed)
        return self._retriever

    # -- sampling: every choice per sample ----------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample rng, in order: the reference (retrieval or one of the given K), then the target mask."""
        from anoplug_anomagic.masks import target_masks

        if self.attention is None:
            raise NotFittedError(f"{self.name} must be fitted or loaded first")
        c = batch.conditions
        out = Samples()
        size = self._work_size()
        img = F.interpolate(batch.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        for i, g in enumerate(rngs):
            requested = c.defect_type[i] if c.defect_type is not None else (self.params.defect_type or None)
            rec: dict[str, Any] = {}
            if c.references is not None:
                rec["reference"] = int(torch.randint(0, c.references.shape[1], (1,), generator=g))
                rec["defect"] = requested or "anomaly"
                rec["reference_category"] = "given"
            else:
                cat = batch.meta[i].get("category") if batch.meta else None
                k, defect = self.retriever().pick(img[i], cat, requested, g, self.params.max_objects)
                r = self.retriever().corpus
                rec.update(reference=k, defect=defect, reference_category=r.categories[k], target_category=cat)
            out.append(rec)
        self._drawn_masks = None
        if c.target_mask is None:
            self._drawn_masks, tries = target_masks(img, list(rngs))
            for rec, t in zip(out, tries):
                rec["mask_tries"] = t
        return out

    # -- 4.–6. generation ---------------------------------------------------------------------------
    def _scheduler(self) -> Any:
        from diffusers import DPMSolverMultistepScheduler

        base = self.parts.scheduler
        if self.params.scheduler == "dpm":
            return DPMSolverMultistepScheduler.from_config(base.config)
        return type(base).from_config(base.config)

    @torch.no_grad()
    def _inpaint(self, z0: torch.Tensor, lat_mask: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 rngs: Sequence[torch.Generator]) -> torch.Tensor:
        """Step 4: the legacy inpaint loop on a batch of latents; returns the final latents."""
        from anoplug.diffusion.blend import per_sample_randn
        from anoplug.diffusion.img2img import Truncated, start_latent
        from anoplug.diffusion.sampling import ClassifierFreeGuidance, sample
        from anoplug_anomagic.inpaint import LegacyKnownRegion

        p = self.params
        noise = per_sample_randn(z0.shape[1:], rngs, z0.device)
        sched = self._scheduler()
        x = start_latent(sched, z0, noise, p.steps, p.strength)
        known = LegacyKnownRegion(z0, 1 - lat_mask, noise, enabled=p.known_region)
        unet = self.parts.unet

        def model(xt: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            return unet(xt, t, encoder_hidden_states=ctx).sample

        hooks = [ClassifierFreeGuidance(uncond, p.guidance, batched=True), known] if p.guidance > 1 else [known]
        x = sample(model, Truncated(sched, p.strength), x, rngs=rngs, num_steps=p.steps, cond=cond, hooks=hooks)
        return known.final(x)

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        from anoplug_anomagic.refine import accepted, refine

        p = self.params
        drawn = self.sample(batch, rngs)  # every rng advanced to where its noise starts, replay or not
        samples = drawn if samples is None else Samples(dict(s) for s in samples)
        c = batch.conditions
        n, (h, w) = len(batch), batch.size
        size = self._work_size()
        src = F.interpolate(batch.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        if c.target_mask is not None:
            tmask = (F.interpolate(c.target_mask, size=(size, size), mode="nearest") > 0.5).float()
        else:  # the creatMask masks sample() drew from each sample's rng
            tmask = self._drawn_masks
        # 1.–2. the image prompt of each sample's reference, with its reference mask
        if c.references is not None:
            refs = torch.stack([c.references[i, s["reference"]] for i, s in enumerate(samples)])
            rmask = (torch.stack([c.reference_masks[i, s["reference"]] for i, s in enumerate(samples)])
                     if c.reference_masks is not None else torch.ones(n, 1, *refs.shape[-2:]))
        else:
            corpus = self.retriever().corpus
            refs = corpus.images[[s["reference"] for s in samples]]
            rmask = corpus.masks[[s["reference"] for s in samples]]
        refs = F.interpolate(refs.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        rmask = (F.interpolate(rmask.float(), size=(size, size), mode="nearest") > 0.5).float()
        z0 = self.parts.encode_image(src)
        lat_ref_mask = self._latent_mask(rmask, z0.shape[-2:])
        grid = self._grid(refs)
        tokens = self._tokens(grid, lat_ref_mask)
        uncond_tokens = self._tokens(torch.zeros_like(grid), lat_ref_mask)  # official: proj of zero features
        prompts = list(c.prompt) if c.prompt is not None else [p.prompt] * n
        cond = torch.cat([pooled_text(self.parts, prompts), tokens], 1)
        uncond = torch.cat([pooled_text(self.parts, [p.negative_prompt] * n), uncond_tokens], 1)
        self.adapter.set_scale(p.ip_scale)
        lat_mask = (F.interpolate(tmask, size=z0.shape[-2:], mode="nearest") > 0.5).float()
        # the contrast reference: the source through the same VAE (our assumption, see refine.py), so the
        # decoder's blur everywhere does not count as change, as a change segmenter would ignore it
        contrast_ref = self.parts.decode(z0)
        # 6. attempts until the acceptance rule passes (each attempt draws new noise from the sample's rng)
        out_img = torch.zeros_like(src)
        out_mask = torch.zeros_like(tmask)
        stats = [{"attempts": 0, "accepted": False, "quality": 0.0, "coverage": 0.0} for _ in range(n)]
        todo = list(range(n))
        for _ in range(p.max_attempts):
            if not todo:
                break
            ix = torch.tensor(todo)
            z = self._inpaint(z0[ix], lat_mask[ix], cond[ix], uncond[ix], [rngs[i] for i in todo])
            gen = self.parts.decode(z)
            r = refine(gen, contrast_ref[ix], tmask[ix], threshold=self._threshold(), backbone=self._backbone())
            ok = accepted(r, p.min_quality, p.min_coverage)
            for j, i in enumerate(todo):
                out_img[i], out_mask[i] = gen[j], r.mask[j]
                stats[i].update(attempts=stats[i]["attempts"] + 1, accepted=bool(ok[j]),
                                quality=round(float(r.quality[j]), 6), coverage=round(float(r.coverage[j]), 6))
            todo = [i for j, i in enumerate(todo) if not bool(ok[j])]
        if (h, w) != (size, size):
            out_img = F.interpolate(out_img, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
            out_mask = (F.interpolate(out_mask, size=(h, w), mode="nearest") > 0.5).float()
            tmask_out = (F.interpolate(tmask, size=(h, w), mode="nearest") > 0.5).float()
        else:
            tmask_out = tmask
        samples = Samples({**s, **st} for s, st in zip(samples, stats))
        labels = [s["defect"] if bool(out_mask[i].any()) else GOOD for i, s in enumerate(samples)]
        meta = [dict(m) for m in batch.meta]
        for m, t in zip(meta, tmask_out):
            m["input_mask_fraction"] = round(float(t.mean()), 6)
        result = Batch(image=out_img.float().contiguous(), mask=out_mask.contiguous(), label=labels, meta=meta,
                       object_mask=batch.object_mask, depth=batch.depth, text=batch.text)
        result.input_mask = tmask_out  # type: ignore[attr-defined]  # the mask the defect was painted into
        return result, samples

    def _threshold(self) -> float:
        from anoplug_anomagic.refine import THRESHOLDS

        t = self.params.contrast_threshold
        return float(t) if t is not None else THRESHOLDS[self._backbone()]

    def _backbone(self) -> str:
        from anoplug_anomagic.refine import backbone_available

        b = self.params.contrast_backbone
        return b if backbone_available(b) else "pixel"
