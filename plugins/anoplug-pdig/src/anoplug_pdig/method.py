"""PDIG (Li, Su, Zhang, Li, Chen, arXiv 2505.06117): photovoltaic defect images from Stable Diffusion.

PDIG fine-tunes a text-to-image diffusion model to few real electroluminescence (EL) defect
images, so a prompt ("a cell with a crack") gives a realistic PV defect. Its three parts, as the
numbered sections of this module (*paper* = named in the paper's abstract, the only text reachable
here; *our assumption* = how it is realised):

1. **SCE, Semantic Concept Embedding** (*paper*: "text-conditioned priors that capture the
   relational concepts between defect types and their appearances"). One concept token per
   defect type whose embedding is the *text prior* — the mean embedding of the words of the
   type's name ("dark cell" → dark, cell) — plus a learned residual (*our assumption*: a
   textual-inversion row anchored at the words, so the concept keeps its text meaning). The
   prompt names the type in words *and* with its concept token.
2. **LISA, Lightweight Industrial Style Adaptor** (*paper*: "injects industrial defect
   characteristics through cross-disentangled attention"): a second key/value branch over a
   few style tokens in every cross-attention layer, beside the untouched text attention
   (:mod:`.lisa`). SCE and LISA are trained together on the real defects with the diffusion
   loss, the frozen base and its text encoder untouched (*our assumption*: ε-MSE with the
   defect pixels weighted ``1 + defect_weight``; some normal crops with a defect-free prompt,
   so the adaptor learns the cell array itself).
3. **TIDSC, Text-Image Dual-Space Constraints** (*paper*: at inference, "positional
   consistency and spatial smoothing alignment"): during the first ``tidsc_fraction`` of the
   denoising steps the latent takes gradient steps on ``position_weight ·`` (share of the concept
   tokens' cross-attention outside the target mask, text space) ``+ smooth_weight ·`` (squared
   image gradient of the decoded x̂0 composited over the source, on a band around the region's
   boundary, image space) (:mod:`.tidsc`).
4. **Where the defect goes and its mask** (*our assumption*; the paper outputs whole images for
   detection): the defect is generated in a target region of a given normal image — the
   ``target_mask`` condition, else a real training mask of that type, flipped and shifted —
   grown by ``region_dilation`` px; outside it the latent is the normal image's (blended back
   before every step). The output mask is the target ∪ (region ∧ visible change), and every pixel
   outside it is the input's, bit for bit.

Real path: ``base_model`` = a local Stable Diffusion v1.x directory (the paper's SD 1.5).
Offline default: the bundled tiny base (``tiny-base``, 64 px). The shipped ``elcells``
checkpoint is trained on the plugin's own EL-like cell-array set (:mod:`.elcells`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from anoplug.conditions import ConditionError
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import GOOD, Batch
from anoplug_pdig import tidsc
from anoplug_pdig.lisa import StyleAdaptor, installed

__all__ = ["Pdig", "PdigParams", "PRESETS", "concept_token"]

#: ``paper``: SD-scale sampling (50 DDIM steps, CFG 7.5, SD's defaults); ``cpu``: the same code, fewer steps
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"steps": 50, "guidance": 7.5},
    "cpu": {"steps": 20, "guidance": 5.0},
}
NORMAL_PROMPT = "a photo of a solar cell panel"
_PIPELINES: dict[str, Any] = {}


def concept_token(index: int) -> str:
    """The SCE placeholder token of defect type ``index``."""
    return f"<pdig_{index}>"


def _pipeline(name: str) -> Any:
    """Each base model once per process (the generator never changes its weights)."""
    if name not in _PIPELINES:
        from anoplug.diffusion.loading import load_pipeline

        _PIPELINES[name] = load_pipeline(name)
    return _PIPELINES[name]


def _words(defect: str) -> str:
    return defect.replace("_", " ").replace("-", " ")


class PdigParams(Params):
    preset: Literal["paper", "cpu"] = Field("paper", description="named sampling settings: paper (SD defaults) or "
                                            "cpu (the same code, fewer steps)")
    base_model: str = Field("tiny-base", description="'tiny-base' (bundled, offline), 'tiny-random', or a local "
                            "Stable Diffusion v1.x directory (the paper's base)")
    template: str = Field("a photo of a solar cell panel with a {} defect", description="prompt template; {} takes "
                          "the defect's concept token and its words")
    style_tokens: int = Field(4, ge=1, le=16, description="LISA: style tokens per defect type")
    style_scale: float = Field(1.0, ge=0.0, le=4.0, description="LISA: weight of the style branch (0 = base model)")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="AdamW learning rate of LISA")
    concept_lr: float = Field(5e-3, gt=0.0, le=1.0, description="learning rate of the SCE residuals (textual "
                              "inversion's 5e-3)")
    batch_size: int = Field(8, ge=1, le=64, description="training batch size")
    normal_share: float = Field(0.25, ge=0.0, lt=1.0, description="share of a training batch that is normal crops "
                                "with the defect-free prompt")
    defect_weight: float = Field(4.0, ge=0.0, le=100.0, description="extra weight of defect pixels in the loss")
    fit_steps: int = Field(1000, ge=1, le=1_000_000, description="training steps")
    defect_type: str = Field("", description="type to generate ('' = from the prompt, else drawn per sample; "
                             "conditions.defect_type overrides)")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta")
    guidance: float = Field(7.5, ge=1.0, le=30.0, description="classifier-free guidance against the defect-free "
                            "prompt")
    tidsc_fraction: float = Field(0.5, ge=0.0, le=1.0, description="TIDSC acts on this first share of the steps")
    tidsc_iterations: int = Field(1, ge=0, le=20, description="TIDSC gradient steps per active denoising step")
    tidsc_step: float = Field(20.0, ge=0.0, le=100_000.0, description="TIDSC step size on the latent")
    position_weight: float = Field(500.0, ge=0.0, le=100_000.0, description="weight of positional consistency (text "
                                   "space; large because the tiny base's attention barely depends on the latent)")
    smooth_weight: float = Field(100.0, ge=0.0, le=100_000.0, description="weight of boundary smoothing (image space)")
    boundary_width: int = Field(2, ge=1, le=16, description="half-width (px, model resolution) of the boundary band")
    region_dilation: int = Field(2, ge=0, le=32, description="px the generated region extends beyond the target")
    change_threshold: float = Field(0.02, gt=0.0, lt=1.0, description="mean |Δ| over channels above which a "
                                    "region pixel counts as changed (joins the mask)")
    max_shift: float = Field(0.25, ge=0.0, le=1.0, description="drawn masks: largest shift, as a share of the side")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit's draws (init, batches, timesteps, noise)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        """A preset fills the fields it names; values given explicitly win."""
        if isinstance(values, dict):
            preset = values.get("preset", "paper")
            if preset in PRESETS:
                values = {**PRESETS[preset], **values}
        return values


class ConceptEmbedding(nn.Module):
    """SCE: per defect type, the text prior (mean word embedding of its name) plus a learned residual."""

    def __init__(self, prior: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prior", prior.detach().clone().float())
        self.residual = nn.Parameter(torch.zeros_like(self.prior))

    def rows(self) -> torch.Tensor:
        return self.prior + self.residual


class Pdig(LearnedGenerator):
    """Few-shot: ``fit(normals, anomalies)`` on real defects with masks and labels, then ``generate(normals)``.

    Conditions: ``prompt`` (free text; a fitted type named in it is the type), ``defect_type``
    (one fitted type per sample), ``target_mask`` (where the defect goes).
    """

    name = "pdig"
    title = "PDIG: PV defects from semantic concept embeddings, a style adaptor and boundary-smoothing constraints"
    category = "diffusion-text"
    tags = ("mask",)
    paper = Paper("Photovoltaic Defect Image Generator with Boundary Alignment Smoothing Constraint for Domain "
                  "Shift Mitigation", venue="arXiv", year=2025, url="https://arxiv.org/abs/2505.06117")
    Params = PdigParams
    requires = Requires(fit=True, anomalies=True, weights="Stable Diffusion v1.x (offline: tiny-base)",
                        accepts=("prompt", "defect_type", "target_mask"))
    preserves_outside_mask: ClassVar[bool] = True
    pretrained: ClassVar[dict[str, str]] = {"elcells": "weights/elcells"}
    smoke_params: ClassVar[dict[str, Any]] = {"steps": 4}
    generation_params: ClassVar[tuple[str, ...]] = (
        "preset", "defect_type", "steps", "eta", "guidance", "style_scale", "tidsc_fraction", "tidsc_iterations",
        "tidsc_step", "position_weight", "smooth_weight", "boundary_width", "region_dilation", "change_threshold",
        "max_shift")

    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS  # -p preset=NAME on a saved model brings its settings

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.types: list[str] = []
        self.sce: ConceptEmbedding | None = None
        self.lisa: StyleAdaptor | None = None
        self.state: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []
        self.last_tidsc: list[tuple[int, float]] = []  # (step, loss) of the latest generate's TIDSC iterations

    # -- the frozen base model ---------------------------------------------------------------------
    @property
    def parts(self) -> Any:
        """The base's parts, frozen, with this generator's concept tokens in its tokenizer."""
        from anoplug.diffusion.finetune.placeholders import PlaceholderEmbedding, embedding_slot, install_placeholders
        from anoplug.diffusion.loading import Parts

        parts = Parts.from_pipeline(_pipeline(self.params.base_model)).freeze()
        tokens = [concept_token(k) for k in range(max(len(self.types), 1))]
        owner, attr = embedding_slot(parts.text_encoder)
        current = getattr(owner, attr)
        vocab = parts.tokenizer.get_vocab()
        if (any(t not in vocab for t in tokens) or not isinstance(current, PlaceholderEmbedding)
                or not set(parts.tokenizer.convert_tokens_to_ids(tokens)) <= set(current.ids.tolist())):
            install_placeholders(parts.text_encoder, parts.tokenizer, tokens, "defect")
        return parts

    def _size(self, parts: Any) -> int:
        return int(parts.unet.config.sample_size) * parts.vae_factor

    def _prompt(self, type_index: int, user: str | None = None) -> str:
        """The prompt of one sample: the concept token and the type's words in the template (or the user's text)."""
        concept = f"{concept_token(type_index)} {_words(self.types[type_index])}"
        if user is None:
            return self.params.template.format(concept)
        return f"{user}, {concept}"

    def _encode(self, parts: Any, prompts: list[str]) -> torch.Tensor:
        """Text states with every concept token reading SCE's rows (with gradients when they have them)."""
        from anoplug.diffusion.finetune.placeholders import embedding_slot

        owner, attr = embedding_slot(parts.text_encoder)
        emb = getattr(owner, attr)
        ids = parts.tokenizer.convert_tokens_to_ids([concept_token(k) for k in range(len(self.types))])
        with emb.injected(self.sce.rows()[None].expand(len(prompts), -1, -1), ids):
            return parts.encode_text(prompts)

    def _concept_columns(self, parts: Any, prompts: list[str], type_index: Sequence[int]) -> torch.Tensor:
        """bool ``[B, L]``: the positions of each prompt's concept token and its words (computed, never fixed)."""
        ids = parts.tokenize(prompts).cpu()
        cols = torch.zeros(ids.shape, dtype=torch.bool)
        for b, k in enumerate(type_index):
            want = set(parts.tokenizer.convert_tokens_to_ids([concept_token(int(k))]))
            want |= set(parts.tokenizer(_words(self.types[int(k)]), add_special_tokens=False).input_ids)
            for j, t in enumerate(ids[b].tolist()):
                cols[b, j] = t in want
        return cols

    def _context(self, parts: Any, text: torch.Tensor, type_index: torch.Tensor) -> torch.Tensor:
        """The UNet context: text states followed by LISA's style tokens of each sample's type."""
        return torch.cat([text, self.lisa.tokens(type_index.to(text.device)).to(text.dtype)], 1)

    # -- persistence ---------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"sce": self.sce, "lisa": self.lisa} if self.sce is not None else {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = {"masks", "mask_types"} - set(tensors)
        if missing:
            raise KeyError(sorted(missing)[0])
        self.state = dict(tensors)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["types"] = list(self.types)
        if self.lisa is not None:
            cfg["code_dim"] = int(self.lisa.codes.shape[1])
        return cfg

    def restore_config(self, config: dict[str, Any]) -> None:
        self.types = list(config.get("types", []))
        if self.types:
            parts = self.parts
            dim = int(parts.text_encoder.config.hidden_size)
            self.sce = ConceptEmbedding(torch.zeros(len(self.types), dim))
            self.lisa = StyleAdaptor(parts.unet, len(self.types), num_tokens=self.params.style_tokens,
                                     code_dim=int(config.get("code_dim", 64)), scale=self.params.style_scale,
                                     generator=torch.Generator().manual_seed(0))

    # -- 1./2. SCE and LISA: modules and training -------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Types from the labels, SCE priors from their words, LISA on the UNet; latents encoded once."""
        if anomalies is None or len(anomalies) == 0 or not bool(anomalies.mask.any()):
            raise ValueError(f"{self.name}.fit needs real defects with masks (anomalies)")
        keep = [i for i in range(len(anomalies)) if anomalies.label[i] != GOOD and bool(anomalies.mask[i].any())]
        anomalies = anomalies[keep]
        self.types = sorted(set(anomalies.label))
        parts = self.parts
        size = self._size(parts)
        base = parts.text_encoder.get_input_embeddings()
        base = getattr(base, "base", base)

        def prior(defect: str) -> torch.Tensor:
            ids = parts.tokenizer(_words(defect), add_special_tokens=False).input_ids
            if not ids:
                raise ValueError(f"defect type {defect!r} tokenizes to nothing")
            return base.weight[ids].detach().float().mean(0)

        with torch.no_grad():
            self.sce = ConceptEmbedding(torch.stack([prior(t) for t in self.types])).to(self.device)
        self.lisa = StyleAdaptor(parts.unet, len(self.types), num_tokens=self.params.style_tokens,
                                 code_dim=int(parts.unet.config.cross_attention_dim), scale=self.params.style_scale,
                                 generator=generator).to(self.device)
        img = F.interpolate(anomalies.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        mask = (F.interpolate(anomalies.mask, size=(size, size), mode="area") > 0).float()
        type_idx = torch.tensor([self.types.index(lab) for lab in anomalies.label])
        from anoplug.diffusion.finetune.common import encode_latents

        z = encode_latents(parts, img).detach()
        lat = int(parts.unet.config.sample_size)
        zm = F.adaptive_max_pool2d(mask, lat)
        if normals is not None and len(normals) > 0:
            nimg = F.interpolate(normals.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
            zn = encode_latents(parts, nimg).detach()
        else:
            zn = z[:0]
        self.state = {"masks": (mask > 0.5).to(torch.uint8), "mask_types": type_idx.clone()}
        with torch.no_grad():
            empty = parts.encode_text([NORMAL_PROMPT])
        return {"parts": parts, "z": z, "zm": zm, "types": type_idx, "zn": zn, "normal_text": empty}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """AdamW on LISA (lr) and on SCE's residuals (concept_lr); the base model stays frozen."""
        return {"pdig": torch.optim.AdamW([
            {"params": list(self.lisa.parameters()), "lr": self.params.lr},
            {"params": [self.sce.residual], "lr": self.params.concept_lr, "weight_decay": 0.0}])}

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> dict[str, Any]:
        """One step: defects under their concept prompts (+ some normals under the defect-free prompt), ε-MSE.

        Draws, from the run's generator: the defect items, the normal items, then the
        timesteps and noise (in :func:`~anoplug.diffusion.finetune.common.noise_prediction_loss`).
        """
        from anoplug.diffusion.finetune.common import draw_indices, noise_prediction_loss

        p, parts = self.params, data["parts"]
        n_norm = int(round(p.batch_size * p.normal_share)) if len(data["zn"]) else 0
        n_def = max(1, p.batch_size - n_norm)
        idx = draw_indices(len(data["z"]), n_def, generator)
        nidx = draw_indices(len(data["zn"]), n_norm, generator) if n_norm else idx[:0]
        types = torch.cat([data["types"][idx], torch.zeros(len(nidx), dtype=torch.long)])
        z0 = torch.cat([data["z"][idx], data["zn"][nidx]])
        weight = 1 + p.defect_weight * torch.cat([data["zm"][idx], torch.zeros_like(data["zm"][:1]).expand(
            len(nidx), -1, -1, -1)]).to(z0)
        prompts = [self._prompt(int(k)) for k in data["types"][idx]]

        def cond() -> torch.Tensor:
            text = self._encode(parts, prompts)
            if len(nidx):
                text = torch.cat([text, data["normal_text"].expand(len(nidx), -1, -1)])
            return self._context(parts, text, types)

        with installed(parts.unet, self.lisa):
            per_px = noise_prediction_loss(parts.unet, parts.scheduler, z0, cond, generator=generator,
                                           mask=weight.sqrt())
        return {"loss": per_px}

    # -- 4. sampling: type, prompt, target region ------------------------------------------------------
    def _types_for(self, batch: Batch, rngs: Sequence[torch.Generator]) -> list[int]:
        """Per sample the type index: conditions.defect_type, else a type named in the prompt, else the
        ``defect_type`` parameter, else drawn (one draw per sample always, so the rng ends alike)."""
        asked = batch.conditions.defect_type
        prompts = batch.conditions.prompt
        out = []
        for i, g in enumerate(rngs):
            drawn = int(torch.randint(0, len(self.types), (1,), generator=g))
            name = asked[i] if asked is not None else None
            if name is None and prompts is not None:
                text = prompts[i].lower().replace("-", " ")
                hits = [t for t in self.types if _words(t) in text or t in text]
                name = max(hits, key=len) if hits else None
            if name is None and self.params.defect_type:
                name = self.params.defect_type
            if name is not None and name not in self.types:
                raise ConditionError(f"conditions.defect_type {name!r} is not a type {self.name} was fitted on; "
                                     f"choose one of {', '.join(self.types)}")
            out.append(self.types.index(name) if name is not None else drawn)
        return out

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the type, and (without a target mask) a real mask of it, flipped and shifted."""
        if self.sce is None:
            raise NotFittedError(f"{self.name} has no learned concepts")
        types = self._types_for(batch, rngs)
        out = Samples()
        bank_types = self.state["mask_types"]
        for k, g in zip(types, rngs):
            pool = torch.nonzero(bank_types == k).flatten()
            u = torch.rand(5, generator=g)
            rec: dict[str, Any] = {"defect_type": self.types[k], "type_index": k}
            if batch.conditions.target_mask is None:
                rec.update(mask_index=int(pool[int(u[0] * len(pool))]), flip_h=bool(u[1] < 0.5),
                           flip_v=bool(u[2] < 0.5), shift_y=float(2 * u[3] - 1) * self.params.max_shift,
                           shift_x=float(2 * u[4] - 1) * self.params.max_shift)
            out.append(rec)
        return out

    def _drawn_mask(self, rec: dict[str, Any], size: int) -> torch.Tensor:
        m = self.state["masks"][int(rec["mask_index"])].float()
        m = F.interpolate(m[None], size=(size, size), mode="nearest")[0]
        if rec["flip_h"]:
            m = m.flip(-1)
        if rec["flip_v"]:
            m = m.flip(-2)
        dy, dx = round(rec["shift_y"] * size), round(rec["shift_x"] * size)
        moved = torch.zeros_like(m)
        ys, yd = slice(max(0, -dy), size - max(0, dy)), slice(max(0, dy), size - max(0, -dy))
        xs, xd = slice(max(0, -dx), size - max(0, dx)), slice(max(0, dx), size - max(0, -dx))
        moved[:, yd, xd] = m[:, ys, xs]
        return moved if bool(moved.any()) else m

    # -- 3. TIDSC: the objective on the latent -----------------------------------------------------------
    def _objective(self, parts: Any, maps: dict[str, list[torch.Tensor]], target_lat: torch.Tensor,
                   cols: torch.Tensor, source: torch.Tensor, region: torch.Tensor, band: torch.Tensor,
                   latent_hw: tuple[int, int]) -> Any:
        p = self.params

        def objective(probe: Any) -> torch.Tensor:
            loss = probe.x.new_zeros(())
            if p.position_weight > 0:
                last = {n: v[-1] for n, v in maps.items() if v}
                loss = loss + p.position_weight * tidsc.positional_consistency_loss(last, target_lat, cols, latent_hw)
            if p.smooth_weight > 0:
                pix = parts.decode(probe.x0)
                comp = region * pix + (1 - region) * source
                loss = loss + p.smooth_weight * tidsc.boundary_smoothness_loss(comp, band)
            for v in maps.values():
                v.clear()
            return loss
        return objective

    # -- the sampling loop ------------------------------------------------------------------------------
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        drawn = self.sample(batch, rngs)  # always drawn, so every rng is where its noise starts
        samples = drawn if samples is None else samples
        # one sample at a time: batched convolutions round differently per batch size, and TIDSC's
        # gradient steps amplify that, so a sample would depend on its batch (the kit checks it)
        self.last_tidsc = []
        outs = [self._one(batch[[i]], [rngs[i]], samples.select([i])) for i in range(len(batch))]
        out = outs[0] if len(outs) == 1 else batch.clone()
        if len(outs) > 1:
            out.image = torch.cat([o.image for o in outs])
            out.mask = torch.cat([o.mask for o in outs])
            out.label = [lab for o in outs for lab in o.label]
            out.meta = [m for o in outs for m in o.meta]
        return out, samples

    def _one(self, batch: Batch, rngs: Sequence[torch.Generator], samples: Samples) -> Batch:
        """The sampling loop on a batch whose draws are done (``samples``); the noise comes from ``rngs``."""
        from anoplug.diffusion.sampling import BlendBefore, ClassifierFreeGuidance, LatentOptimization, sample

        p, parts = self.params, self.parts
        size, lat = self._size(parts), int(parts.unet.config.sample_size)
        h, w = batch.size
        dev = parts.device
        src = F.interpolate(batch.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1) \
            if (h, w) != (size, size) else batch.image
        src = src.to(dev)
        if batch.conditions.target_mask is not None:
            target = (F.interpolate(batch.conditions.target_mask.float(), size=(size, size), mode="area") > 0.5).float()
        else:
            target = torch.stack([self._drawn_mask(r, size) for r in samples])
        target = target.to(dev)
        k = 2 * p.region_dilation + 1
        region = F.max_pool2d(target, k, stride=1, padding=p.region_dilation) if p.region_dilation else target
        band = tidsc.boundary_band(region, p.boundary_width)
        types = torch.tensor([int(r["type_index"]) for r in samples])
        users = batch.conditions.prompt
        prompts = [self._prompt(int(t), None if users is None else users[i]) for i, t in enumerate(types)]
        cols = self._concept_columns(parts, prompts, types.tolist())
        region_lat = F.adaptive_max_pool2d(region, lat)
        target_lat = F.adaptive_avg_pool2d(target, lat)
        self.lisa.set_scale(p.style_scale)
        with torch.no_grad():
            z0 = parts.encode_image(src)
            cond = self._context(parts, self._encode(parts, prompts), types)
            uncond = self._context(parts, parts.encode_text([NORMAL_PROMPT] * len(batch)), types)

        tidsc_on = p.tidsc_iterations > 0 and p.tidsc_step > 0 and (p.position_weight > 0 or p.smooth_weight > 0)
        with installed(parts.unet, self.lisa), self.lisa.recording() as maps:

            def model(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
                for v in maps.values():  # keep only this pass's attention maps
                    v.clear()
                return parts.unet(x, t, encoder_hidden_states=c).sample

            hooks: list[Any] = [BlendBefore(z0, region_lat)]  # 4. the background is the normal image's
            opt = None
            if tidsc_on:  # 3. TIDSC on the latent, before the step's prediction
                opt = LatentOptimization(self._objective(parts, maps, target_lat, cols, src, region, band, (lat, lat)),
                                         iterations=p.tidsc_iterations, step_size=p.tidsc_step,
                                         active=lambda i, n: i < round(p.tidsc_fraction * n))
                hooks.append(opt)
            if p.guidance > 1.0:
                hooks.append(ClassifierFreeGuidance(uncond, p.guidance))
            shape = (len(batch), int(parts.unet.config.in_channels), lat, lat)
            gen = sample(model, parts.scheduler, shape=shape, rngs=rngs, num_steps=p.steps, eta=p.eta, cond=cond,
                         hooks=hooks, decode=parts.decode, device=dev)
        self.last_tidsc += list(opt.losses) if opt is not None else []
        gen = gen.float().cpu()
        if (h, w) != (size, size):
            gen = F.interpolate(gen, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
            target = (F.interpolate(target.cpu(), size=(h, w), mode="area") > 0.5).float()
            region = (F.interpolate(region.cpu(), size=(h, w), mode="area") > 0).float()
        target, region = target.cpu(), region.cpu()
        changed = ((gen - batch.image).abs().mean(1, keepdim=True) > p.change_threshold).float()
        mask = torch.maximum(target, region * changed)
        out = batch.clone()
        out.image = torch.where(mask.expand_as(gen) > 0.5, gen, batch.image)
        out.mask = mask
        out.label = [r["defect_type"] if bool(mask[i].any()) else GOOD for i, r in enumerate(samples)]
        for i in range(len(out)):
            out.meta[i] = {**out.meta[i], "prompt": prompts[i]}
        return out
