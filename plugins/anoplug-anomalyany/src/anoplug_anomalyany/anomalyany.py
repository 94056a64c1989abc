"""AnomalyAny (Sun, Cao, Dong, Fink — CVPR 2025, "Unseen Visual Anomaly Generation"): training-free.

A pretrained text-to-image latent diffusion model (Stable Diffusion v1.5 in the paper) draws a
named defect into *one* normal image: it starts from that image's noised latent and, while it
denoises, optimises the latent (and the prompt embeddings) so that the anomaly word gets
attention and the image matches a detailed description. Read top to bottom, as the official
notebook runs it (``clip_pipeline_attend_and_excite.py``, commit 585198d):

0. **Prompts** (:mod:`.prompts`). The anomaly prompt ("a photo of a hazelnut with a crack on it"),
   the anomaly word's token positions (computed with the model's tokenizer), a normal prompt
   and a detailed prompt; all but the first default from it.
1. **Prompt pre-optimisation** (:func:`.guidance.pre_optimise_prompt`). 20 steps of 0.1 move the
   anomaly token's embedding (both CFG halves) so that its normal → anomalous shift points along
   the normal → detailed shift.
2. **Test-time normal-sample conditioning** (:mod:`.schedule`). The normal image's VAE latent,
   noised to ``timesteps[t_start]``, ``t_start = N − ⌊N·γ⌋``; only the last ``T′ = ⌊N·γ⌋`` steps
   run (N = 200, γ = 0.3: 60 steps).
3. **Attention-guided anomaly optimisation + prompt-guided refinement**
   (:class:`.guidance.InnerOptimisation`), at every step: 10 iterations of
   ``L = 0.1·L_clip + 0.5·(i/T′)·L_att`` on the latent and ``L + 1 − cos(prompt, detailed)`` on
   the prompt embeddings; ``L_att = max(0, 1 − max(token map))`` (Attend-and-Excite),
   ``L_clip = 1 − cos(CLIP(decoded x_t), CLIP(detailed prompt))`` after ``0.7·T′``.
4. **Attend-and-Excite refinement** (:func:`.guidance.refinement_hooks`) in the first steps
   (official: only i = 0) while the token's map has not localised.
5. **Guided step**: classifier-free guidance (12.5) with the optimised prompt, the scheduler
   step (PNDM, SD's default).
6. **Mask blend** (optional; the MVTec notebook passes the object's foreground mask):
   ``x_{t−1} ← m·x_{t−1} + (1−m)·q(z0, t)``, with the noise level of t, not t−1 (the
   toolkit's :class:`~anoplug.diffusion.sampling.BlendAfter`).
7. **Decode**; then (beyond the original, :mod:`.masks`) the mask = the anomaly token's
   binarised attention ∧ the visible change (∧ the confining mask).

Offline, the committed tiny base (``tiny-base``, 64 px) and tiny CLIP stand in for SD v1.5 and
ViT-L/14; ``base_model`` / ``clip_model`` take local directories of the real ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import Params
from anoplug.types import GOOD, Batch
from anoplug_anomalyany import masks as M
from anoplug_anomalyany.prompts import PromptSet, resolve

__all__ = ["AnomalyAny", "AnomalyAnyParams", "PRESETS"]

#: Named settings. ``paper`` = the official MVTec notebook; ``cpu`` = the same code scaled down for the
#: committed 64-px tiny base (fewer steps, a larger γ so that 10 steps still run).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"steps": 20, "gamma": 0.5},
}

_PIPELINES: dict[str, Any] = {}


def _parts(name: str, device: torch.device | str | None = None) -> Any:
    """The frozen base model's parts, loaded once per process (weights are never changed), on ``device``."""
    if name not in _PIPELINES:
        from anoplug.diffusion.loading import Parts, load_pipeline

        _PIPELINES[name] = Parts.from_pipeline(load_pipeline(name)).freeze()
    parts = _PIPELINES[name]
    if device is not None and parts.device != torch.device(device):
        for m in (parts.unet, parts.vae, parts.text_encoder):
            m.to(device)
    return parts


class AnomalyAnyParams(Params):
    preset: Literal["paper", "cpu"] = Field("paper", description="named settings: paper = the official notebook, "
                                            "cpu = fewer steps for the tiny base; explicit values override it")
    base_model: str = Field("tiny-base", description="'tiny-base' (committed, offline) or a local Stable Diffusion "
                            "v1.x directory (the paper's: stable-diffusion-v1-5)")
    clip_model: str = Field("tiny", description="'tiny' (committed, offline) or a local CLIPModel directory (the "
                            "paper's: clip-vit-large-patch14)")
    resolution: int = Field(0, ge=0, le=2048, description="working size in px (0 = the base model's native size; "
                            "official: 512)")
    scheduler: Literal["pndm", "ddim"] = Field("pndm", description="sampler (official: PNDM, SD v1.5's default)")
    steps: int = Field(200, ge=2, le=1000, description="full schedule length N (official 200)")
    gamma: float = Field(0.3, gt=0.0, le=1.0, description="share of the schedule that runs from the noised normal "
                         "latent, T' = int(N*gamma) (official MVTec notebook 0.3; 1 = start from pure noise)")
    guidance: float = Field(12.5, ge=1.0, le=30.0, description="classifier-free guidance scale (official 12.5)")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta (scheduler=ddim only)")
    inner_iterations: int = Field(10, ge=0, le=50, description="joint latent + prompt updates per step (official 10)")
    latent_step: float = Field(0.02, ge=0.0, le=1.0, description="s_0 of s_i = max(min, s_0 - decay*i); the latent "
                               "moves by 2*s_i, the prompt by s_i (official 0.02)")
    latent_step_decay: float = Field(1e-4, ge=0.0, le=0.01, description="decay of s_i per step (official 1e-4)")
    latent_step_min: float = Field(1e-4, ge=0.0, le=0.1, description="floor of s_i (official 1e-4)")
    attention_weight: float = Field(0.5, ge=0.0, le=10000.0, description="weight of L_att, times i/T' (official 0.5)")
    clip_weight: float = Field(0.1, ge=0.0, le=10000.0, description="weight of the CLIP loss (official 0.1)")
    clip_from: float = Field(0.7, ge=0.0, le=1.0, description="CLIP loss on for steps i > this * T' (official 0.7)")
    update_prompt: bool = Field(True, description="optimise the prompt embeddings in the inner iterations (official)")
    scale_factor: float = Field(50.0, ge=0.0, le=100000.0, description="Attend-and-Excite step size (official MVTec "
                                "notebook 50; config default 20)")
    scale_range: tuple[float, float] = Field((1.0, 0.5), description="A&E step scale, linspace over the full "
                                             "schedule, indexed by the truncated step (official)")
    threshold_steps: tuple[float, float, float] = Field((0.0, 1 / 6, 1 / 3), description="A&E threshold steps as "
                                                        "fractions of T' (official steps 0, 10, 20 of 60)")
    thresholds: tuple[float, float, float] = Field((0.05, 0.5, 0.8), description="A&E refinement runs where "
                                                   "L_att > 1 - threshold (official 0.05, 0.5, 0.8)")
    refine_iterations: int = Field(5, ge=0, le=50, description="A&E refinement steps (official 5)")
    localize_until: float = Field(1 / 6, ge=0.0, le=1.0, description="A&E updates only for i < this * T' "
                                  "(official i < 10 of 60)")
    max_iter_to_alter: float = Field(25 / 60, ge=0.0, le=1.0, description="the final A&E step only for "
                                     "i < this * T' (official 25 of 60)")
    localization_band: tuple[float, float] = Field((10 / 256, 50 / 256), description="a binarised token map "
                                                   "covering this share of pixels (official 10..50 of 256) "
                                                   "switches the A&E updates off")
    attention_res: int = Field(16, ge=1, le=128, description="side of the attention maps used (official 16)")
    smooth_attentions: bool = Field(True, description="3x3 Gaussian smoothing of the token map (official)")
    sigma: float = Field(0.5, gt=0.0, le=5.0, description="smoothing sigma (official 0.5)")
    prompt_init_steps: int = Field(20, ge=0, le=200, description="pre-optimisation steps of the anomaly token "
                                   "(official 20; 0 = off)")
    prompt_init_lr: float = Field(0.1, ge=0.0, le=10.0, description="their step size (official 0.1)")
    prompt_init_axis: Literal["features", "tokens"] = Field(
        "features", description="cosine of the pre-optimisation over the feature axis (the described objective) or "
        "the token axis (the official call literally: zero gradient for a one-token word)")
    anomaly_word: str = Field("", description="the word to excite ('' = the last defect noun of the prompt, else the "
                              "word after 'with')")
    normal_prompt: str = Field("", description="the normal prompt ('' = the prompt before ' with ')")
    detailed_prompt: str = Field("", description="the detailed description for the CLIP and prompt losses "
                                 "('' = the prompt itself; the paper uses an LLM-written one)")
    confine: Literal["object", "none"] = Field("object", description="without conditions.target_mask: confine the "
                                               "change to batch.object_mask (the notebook's foreground mask) or not")
    change_threshold: float = Field(0.1, gt=0.0, lt=1.0, description="output mask: a pixel changed when some channel "
                                    "moved by more than this (on [0,1])")
    attention_threshold: float = Field(0.0, ge=0.0, lt=1.0, description="output mask: binarise the max-normalised "
                                       "token map at this (0 = at its mean, the official rule)")
    resize_back: Literal["residual", "image"] = Field(
        "residual", description="when the batch is not at the working size: add the upsampled change to the input "
        "(keeps its detail) or upsample the generated image (the original outputs its working size)")
    paste_outside_mask: bool = Field(False, description="take every pixel outside the output mask from the input "
                                     "(not in the original)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        """A preset fills the fields it names; values given explicitly win."""
        if isinstance(values, dict):
            preset = values.get("preset", "paper")
            if preset in PRESETS:
                values = {**PRESETS[preset], **values}
        return values


def _working(images: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


class AnomalyAny(Generator):
    """Training-free: ``generate(batch.with_conditions(prompt=[...]))`` draws the prompt's defect into each image.

    Optional ``conditions.target_mask`` confines the change (1 = may change); without it
    ``batch.object_mask`` does (``confine="object"``). The output mask is the anomaly token's
    binarised attention ∧ the visible change (see :mod:`anoplug_anomalyany.masks`).
    """

    name = "anomalyany"
    title = "AnomalyAny: unseen anomalies from one normal image and a prompt (attention + CLIP guided SD)"
    category = "diffusion-text"
    tags = ("mask",)
    paper = Paper("Unseen Visual Anomaly Generation (AnomalyAny)", "CVPR", 2025, "https://arxiv.org/abs/2406.01078",
                  "https://github.com/EPFL-IMOS/AnomalyAny")
    Params = AnomalyAnyParams
    requires = Requires(weights="stable-diffusion-v1-5 + clip-vit-large-patch14 (offline: tiny-base, tiny CLIP)",
                        conditions=("prompt",), accepts=("target_mask",))
    smoke_params = {"preset": "cpu", "steps": 10, "inner_iterations": 2, "prompt_init_steps": 2}
    preserves_outside_mask: ClassVar[bool] = False  # the whole latent is re-generated (paste_outside_mask is opt-in)
    #: training-free: no parameter describes learned weights, so every one may change on a saved generator
    #: (``anoplug generate anomalyany --load DIR -p steps=40``); the host refuses all of them otherwise.
    generation_params: ClassVar[tuple[str, ...]] = tuple(AnomalyAnyParams.model_fields)

    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS  # -p preset=NAME on a saved model brings its settings

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        #: diagnostics of the last generate call (per-step attention peaks, losses, localisation); see guidance.py
        self.trace: dict[str, Any] = {}

    # -- 0. prompts ----------------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """No random choice is drawn here (the noise comes later from each rng): the record is the resolved text."""
        p = self.params
        parts = _parts(p.base_model)
        sets = resolve(parts.tokenizer, batch.conditions.prompt, word=p.anomaly_word, normal=p.normal_prompt,
                       detailed=p.detailed_prompt, max_length=self._max_length(parts))
        return Samples(s.record() for s in sets)

    @staticmethod
    def _max_length(parts: Any) -> int:
        return min(int(getattr(parts.tokenizer, "model_max_length", 77) or 77), 77)

    def _replayed(self, samples: Samples, parts: Any) -> list[PromptSet]:
        out = []
        for i, s in enumerate(samples):
            try:
                (ps,) = resolve(parts.tokenizer, [s["prompt"]], word=s["anomaly_word"], normal=s["normal_prompt"],
                                detailed=s["detailed_prompt"], max_length=self._max_length(parts))
            except (KeyError, TypeError) as e:
                raise ValueError(f"samples[{i}] is not an {self.name} record (prompt, anomaly_word, normal_prompt, "
                                 f"detailed_prompt): {e}") from e
            out.append(ps)
        return out

    # -- the run ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        from anoplug.diffusion import sampling as S
        from anoplug.diffusion.base import make_scheduler
        from anoplug.diffusion.blend import per_sample_randn
        from anoplug_anomalyany import guidance as G
        from anoplug_anomalyany.clip_loss import load_judge
        from anoplug_anomalyany.schedule import Img2ImgScheduler

        p = self.params
        parts = _parts(p.base_model, self.device)
        drawn = self.sample(batch, rngs)
        sets = self._replayed(samples if samples is not None else drawn, parts)
        records = Samples(s.record() for s in sets)
        n, (h, w) = len(batch), batch.size
        dev = parts.device
        size = p.resolution or int(parts.unet.config.sample_size) * parts.vae_factor
        src = _working(batch.image.to(dev), size)

        # 0. token positions [B, K] (a word may take several tokens; padded with its first one)
        k_max = max(len(s.token_indices) for s in sets)
        idx = torch.tensor([list(s.token_indices) + [s.token_indices[0]] * (k_max - len(s.token_indices)) for s in sets],
                           device=dev)
        kmask = torch.tensor([[k < len(s.token_indices) for k in range(k_max)] for s in sets], device=dev)
        cond = parts.encode_text([s.prompt for s in sets])
        uncond = parts.encode_text([""] * n)
        normal = (parts.encode_text([s.normal_prompt for s in sets]), uncond)
        detailed = (parts.encode_text([s.detailed_prompt for s in sets]), uncond)

        # 1. prompt pre-optimisation: the anomaly token's shift along the normal → detailed shift
        cond, uncond_opt, init_cos = G.pre_optimise_prompt(cond, uncond, normal, detailed, idx, kmask,
                                                           steps=p.prompt_init_steps, lr=p.prompt_init_lr,
                                                           axis=p.prompt_init_axis)

        # 2. test-time normal-sample conditioning: VAE posterior sample, noised to timesteps[t_start]
        dist = parts.vae.encode(src * 2 - 1).latent_dist
        z0 = (dist.mean + dist.std * per_sample_randn(dist.mean.shape[1:], rngs, dev)) * parts.scaling_factor
        scheduler = Img2ImgScheduler(make_scheduler(p.scheduler), p.gamma)
        scheduler.set_timesteps(p.steps, device=dev)
        run_steps = p.steps - scheduler.t_start  # T′ (PNDM runs one step more: its duplicated first timestep)
        if run_steps < 1:
            raise ValueError(f"gamma={p.gamma} with steps={p.steps} runs no step: raise gamma or steps")
        x_start = scheduler.add_noise(z0, per_sample_randn(z0.shape[1:], rngs, dev), scheduler.start_timestep.reshape(1))

        # 3-4. the guidance hooks
        state = G.GuidanceState(indices=idx, res=p.attention_res, smooth=p.smooth_attentions, sigma=p.sigma)
        sched = self._schedule(run_steps, len(scheduler.full_timesteps))
        judge = load_judge(p.clip_model, dev) if p.clip_weight > 0 else None
        text_feats = judge.text_features([s.detailed_prompt for s in sets]) if judge is not None else None
        capture = S.CaptureCrossAttention(parts.unet)
        cfg = S.ClassifierFreeGuidance(uncond_opt, p.guidance, batched=True)
        inner = G.InnerOptimisation(state, sched, cfg, detailed, decode=parts.decode,
                                    clip_distance=(lambda im: judge.distance(im, text_feats)) if judge else None,
                                    iterations=p.inner_iterations, update_prompt=p.update_prompt)
        hooks: list[S.Hook] = [inner, *G.refinement_hooks(state, sched, p.refine_iterations), capture, cfg]

        # 6. the mask blend at noise level t (x_{t-1} <- m x_{t-1} + (1-m) q(z0, t))
        region = self._confine(batch)
        if region is not None:
            lat = (F.interpolate(region.to(dev), size=tuple(z0.shape[-2:]), mode="nearest") > 0).float()
            hooks.append(S.BlendAfter(z0, lat))

        # 5 + 7. the guided steps, then decode back to the batch's size
        src_full = batch.image.to(dev)

        def decode(z: torch.Tensor) -> torch.Tensor:
            img = parts.decode(z)
            if (h, w) == (size, size):
                return img
            if p.resize_back == "residual":  # the change, upsampled onto the full-size input
                return (src_full + F.interpolate(img - src, size=(h, w), mode="bicubic", align_corners=False)).clamp(0, 1)
            return F.interpolate(img, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)

        out = S.sample(lambda x, t, c: parts.unet(x, t, encoder_hidden_states=c).sample, scheduler, x_start,
                       rngs=rngs, num_steps=p.steps, eta=p.eta, cond=cond, hooks=hooks, decode=decode)

        # 7. (extension) the mask: binarised token attention ∧ visible change ∧ the confining region
        step_maps = [state.maps(rec) for rec in capture.maps]
        att = M.attention_region(step_maps, (h, w), p.attention_threshold)
        change = M.visible_change(out, src_full, p.change_threshold)
        mask = M.anomaly_mask(att, change, None if region is None else (region.to(out.device) > 0).float())
        if p.paste_outside_mask:
            out = torch.where(mask.bool().expand_as(out), out, src_full)
        labels = [s.anomaly_word if bool(mask[i].any()) else GOOD for i, s in enumerate(sets)]
        self.trace = {**state.trace, "peak_out": [m.flatten(2).amax(-1).amin(-1) for m in step_maps],
                      "prompt_init_cos": init_cos, "timesteps": [int(t) for t in scheduler.timesteps],
                      "t_start": scheduler.t_start, "attention": att, "change": change, "n_start": state.n_start,
                      "localize": state.localize}
        result = Batch(image=out.float().contiguous(), mask=mask.float().contiguous(), label=labels,
                       meta=[dict(m) for m in batch.meta], object_mask=batch.object_mask, depth=batch.depth,
                       text=batch.text)
        return result, records

    def _schedule(self, run_steps: int, full_len: int) -> Any:
        from anoplug_anomalyany.guidance import Schedule

        p = self.params
        pix = p.attention_res ** 2
        return Schedule(run_steps=run_steps, scale_range=torch.linspace(p.scale_range[0], p.scale_range[1], full_len),
                        latent_step=p.latent_step, latent_step_decay=p.latent_step_decay,
                        latent_step_min=p.latent_step_min, clip_from=p.clip_from, clip_weight=p.clip_weight,
                        attention_weight=p.attention_weight,
                        threshold_steps=tuple(int(round(f * run_steps)) for f in p.threshold_steps),
                        thresholds=tuple(p.thresholds), localize_until=p.localize_until * run_steps,
                        max_iter_to_alter=p.max_iter_to_alter * run_steps,
                        band=(p.localization_band[0] * pix, p.localization_band[1] * pix), scale_factor=p.scale_factor)

    def _confine(self, batch: Batch) -> torch.Tensor | None:
        """Where the change may happen (1): the target mask, else the object mask (``confine="object"``), else nowhere."""
        if batch.conditions.target_mask is not None:
            return batch.conditions.target_mask
        if self.params.confine == "object" and batch.object_mask is not None:
            return batch.object_mask
        return None
