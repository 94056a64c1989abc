"""AnoGen (Gui, Gao et al., ECCV 2024): few-shot anomaly-driven generation with one learned token and a box.

The paper's three stages, and where each lives:

1. **Anomaly embedding** (:meth:`AnoGen.build`, :meth:`AnoGen.training_step`): from only k = 3
   real defects of one type, learn *one* textual-inversion vector ("*") of a frozen latent
   text-to-image model. The ε-prediction loss is multiplied by the defect mask (bilinearly
   resized to the latent, every non-zero value set to 1), so the vector learns the defect, not
   the object around it. Prompts are the 26 ``imagenet_templates_small``; images are flipped
   horizontally with p = 0.5; AdamW, lr 5e-3 × batch 4 = 2e-2, 6100 steps. Each defect type is
   its own inversion (its own vector and optimiser), run one after the other.
2. **Box and generation** (:mod:`.boxes`, :meth:`AnoGen.sample`, :meth:`AnoGen.generate_batch`):
   a box whose width and height are drawn in the (object, defect) pair's range, rotated by
   0–180°, kept only when more than 75 % of it lies on the object; then DDIM (50 steps, η = 0,
   classifier-free guidance 10 against "") from noise, prompted by "*" alone, with the normal
   image's latent blended back outside the box before every step:
   ``x_t ← m·x_t + (1 − m)·q(z0, t)`` (the box nearest-resized to the latent).
3. **Weak supervision** (``anoplug_metrics.weak``, an option of the evaluation plugin's DRAEM
   detector): the box is the label, but inside it only pixels the detector already scores above
   ``p_cutoff`` are supervised. So this generator returns the box as ``mask`` and marks it
   weak (``meta["mask_kind"] == "box"``, ``meta["sample"]["weak"]``, which the manifest records);
   as an extension it also returns ``extras["refined_mask"]`` = box ∧ visible change.

Real path: ``base_model`` = a local copy of ``CompVis/ldm-text2im-large-256`` (the paper's
LDM-BERT checkpoint, diffusers format) or a Stable Diffusion directory. Offline default: the
bundled tiny base (``tiny-base``, 64 px).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator

from anoplug.conditions import ConditionError
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import GOOD, Batch
from anoplug_anogen.boxes import BoxRange, box_from_corners, box_table, draw_boxes, range_from_masks, rasterise

__all__ = ["AnoGen", "AnoGenParams", "TEMPLATES", "PLACEHOLDER", "PRESETS", "latent_loss_mask", "refined_mask"]

#: textual inversion's ``imagenet_templates_small`` (the official data loader draws one per item).
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}")

#: the placeholder token the learned vector replaces (the official string is "*"; an added token here,
#: so that "*" keeps its own embedding in the tokenizer — same effect).
PLACEHOLDER = "<anogen>"

#: named configurations: ``paper`` = the official defaults; ``cpu`` = the same code, scaled down.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"fit_steps": 50},  # the shipped recipe (tools/train_shipped.py)
}

_PIPELINES: dict[str, Any] = {}


def _pipeline(name: str) -> Any:
    """Each base model once per process; generators inject their vectors and never change its weights."""
    if name not in _PIPELINES:
        from anoplug.diffusion.finetune.placeholders import install_placeholders
        from anoplug.diffusion.loading import load_pipeline

        pipe = load_pipeline(name)
        install_placeholders(pipe.bert if hasattr(pipe, "bert") else pipe.text_encoder, pipe.tokenizer,
                             [PLACEHOLDER], "defect")
        _PIPELINES[name] = pipe
    return _PIPELINES[name]


def latent_loss_mask(pix_mask: torch.Tensor, size: Sequence[int], rule: str = "nonzero") -> torch.Tensor:
    """The defect mask at latent size for the masked loss: bilinear (no antialias), then binarised.

    ``"nonzero"`` is the official rule (``mask != 0`` → 1, which dilates the mask a little);
    ``"half"`` keeps ``>= 0.5``.
    """
    m = F.interpolate(pix_mask.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return (m != 0).float() if rule == "nonzero" else (m >= 0.5).float()


def refined_mask(box: torch.Tensor, generated: torch.Tensor, source: torch.Tensor, threshold: float) -> torch.Tensor:
    """Extension (not in the paper): box ∧ visible change, a pixel changing when a channel moved by more than ``threshold``."""
    changed = (generated - source).abs().amax(1, keepdim=True) > threshold
    return (box.bool() & changed).float()


class AnoGenParams(Params):
    base_model: str = Field("tiny-base", description="'tiny-base' (bundled, offline), 'tiny-random', or a local dir "
                            "of CompVis/ldm-text2im-large-256 (the paper's) or of Stable Diffusion")
    resolution: int = Field(0, ge=0, le=1024, description="working size in px (0 = the base model's native size; "
                            "paper 256)")
    init_word: str = Field("defect", description="word whose embedding initialises the vector (official: 'defect')")
    shots: int = Field(3, ge=1, le=64, description="real defects per type the vector learns from (k; paper 3)")
    shot_seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the choice of the k shots among the given "
                           "defects (official: 0)")
    fit_steps: int = Field(6100, ge=1, le=1_000_000, description="inversion steps per defect type (official max_steps "
                           "6100)")
    lr: float = Field(2e-2, gt=0.0, le=1.0, description="AdamW learning rate (5e-3 x batch 4, scale_lr)")
    weight_decay: float = Field(1e-2, ge=0.0, le=1.0, description="AdamW weight decay (torch's default, as the "
                                "official optimiser)")
    batch_size: int = Field(4, ge=1, le=64, description="inversion batch size (official 4)")
    flip_p: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip per training item")
    loss_mask_rule: Literal["nonzero", "half"] = Field(
        "nonzero", description="defect mask at latent size: bilinear then != 0 (official) or >= 0.5")
    prompt: str = Field("*", description="generation prompt; '*' is the learned token (official: exactly '*')")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta")
    guidance: float = Field(10.0, ge=0.0, le=50.0, description="classifier-free guidance scale against '' (1 = off)")
    object_category: str = Field("", description="object/texture name for the box-range table ('' = the fitted "
                                 "anomalies' meta['category'])")
    box_table: Literal["auto", "mvtec", "toy", "shots"] = Field(
        "auto", description="box size ranges: the official MVTec table, the measured toy table, the k shots' own "
        "bounding boxes, or auto (toy table for toy data, else MVTec; then shots)")
    rotate: Literal["always", "table", "never"] = Field(
        "always", description="rotate boxes by 0-180 deg: always (official behaviour: its flags are non-empty "
        "strings), as the table declares, or never")
    min_foreground: float = Field(0.75, ge=0.0, lt=1.0, description="a box is kept when more than this share of "
                                  "its area lies on the object (official 0.75)")
    max_box_draws: int = Field(4096, ge=64, le=1_000_000, description="candidate boxes per sample before the best "
                               "one is kept anyway (official: no limit)")
    paste_background: bool = Field(False, description="paste the source pixels outside the box bit-exactly "
                                   "(extension; official: the whole decoded image)")
    refine_threshold: float = Field(0.1, gt=0.0, lt=1.0, description="extension: refined mask = box and a channel "
                                    "moved by more than this")
    defect_type: str = Field("", description="type to generate ('' = drawn per sample; conditions.defect_type wins)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit's draws (batches, flips, timesteps, noise, "
                      "templates)")

    @field_validator("prompt")
    @classmethod
    def _has_star(cls, v: str) -> str:
        if "*" not in v:
            raise ValueError("prompt must contain '*', the learned token")
        return v


class _Vectors(nn.Module):
    """One learned vector per defect type, each its own parameter (each type is its own inversion)."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.rows = nn.ParameterList([nn.Parameter(r.detach().clone().float()) for r in init])

    def stacked(self) -> torch.Tensor:
        return torch.stack(list(self.rows))


def _unet_call(parts: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda x, t, cond: parts.unet(x, t, encoder_hidden_states=cond).sample


class AnoGen(LearnedGenerator):
    """Few-shot: ``fit(None, anomalies)`` on k real defects per type, then ``generate(batch)`` on normal images.

    Conditions (optional): ``boxes`` — where the defect goes, ``(type, x1, y1, x2, y2)`` per box in
    [0, 1] (a sample's boxes share one type); ``defect_type`` — which fitted type. Without
    boxes, each sample draws one by the paper's rule on its ``object_mask`` (or the whole image).
    """

    name = "anogen"
    title = "AnoGen: few-shot textual inversion + box-blended DDIM (weak box labels)"
    category = "diffusion-image"
    paper = Paper("Few-Shot Anomaly-Driven Generation for Anomaly Classification and Segmentation", "ECCV", 2024,
                  "https://arxiv.org/abs/2505.09263", "https://github.com/gaobb/AnoGen")
    Params = AnoGenParams
    requires = Requires(fit=True, anomalies=True, weights="CompVis/ldm-text2im-large-256 (offline: tiny-base)",
                        accepts=("boxes", "defect_type"))
    preserves_outside_mask: ClassVar[bool] = False  # the whole image is decoded (paste_background=True makes it exact)
    #: one checkpoint per toy category (its defect types' vectors), trained by ``tools/train_shipped.py``
    #: read at generation only (sampler, box drawing, mask rule); the learned vector and what it was fitted
    #: from (base model, shots, inversion settings) stay as saved.
    generation_params: ClassVar[tuple[str, ...]] = (
        "prompt", "steps", "eta", "guidance", "object_category", "box_table", "rotate", "min_foreground",
        "max_box_draws", "paste_background", "refine_threshold", "defect_type")
    pretrained: ClassVar[dict[str, str]] = {c: f"weights/{c}" for c in (
        "capsule", "nut", "bottle", "metal", "wood", "fabric", "carpet", "tile", "surface3d", "tray")}

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.types: list[str] = []
        self.ranges: dict[str, BoxRange] = {}
        self.range_source: dict[str, str] = {}
        self.object_category = ""
        self.vectors: _Vectors | None = None
        self.history: list[dict] = []

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AnoGen:
        """A generator with preset ``name`` (``paper``: the official defaults; ``cpu``: scaled down) and overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # -- the frozen base model ---------------------------------------------------------------------------
    @property
    def parts(self) -> Any:
        from anoplug.diffusion.loading import Parts

        return Parts.from_pipeline(_pipeline(self.params.base_model)).freeze()

    def _embedding(self, parts: Any) -> Any:
        from anoplug.diffusion.finetune.placeholders import embedding_slot

        owner, attr = embedding_slot(parts.text_encoder)
        return getattr(owner, attr)

    def _placeholder_id(self, parts: Any) -> int:
        return int(parts.tokenizer.convert_tokens_to_ids(PLACEHOLDER))

    def _size(self, parts: Any) -> int:
        return self.params.resolution or int(parts.unet.config.sample_size) * parts.vae_factor

    def _prompt(self) -> str:
        return self.params.prompt.replace("*", PLACEHOLDER)

    def _encode_with(self, parts: Any, prompts: list[str], vectors: torch.Tensor) -> torch.Tensor:
        """Text embeddings of ``prompts`` with each prompt's placeholder reading its row of ``vectors`` [B, D]."""
        with self._embedding(parts).injected(vectors[:, None], [self._placeholder_id(parts)]):
            return parts.encode_text(prompts)

    def _build(self, types: Sequence[str], init: torch.Tensor | None = None) -> None:
        parts = self.parts
        if init is None:
            base = self._embedding(parts).base.weight
            ids = parts.tokenizer(self.params.init_word, add_special_tokens=False).input_ids
            if not ids:
                raise ValueError(f"init_word {self.params.init_word!r} tokenizes to nothing")
            init = base[ids[0]].detach()[None].expand(len(types), -1)
        self.types = list(types)
        self.vectors = _Vectors(init).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"vectors": self.vectors} if self.vectors is not None else {}

    def to(self, device: str | torch.device) -> AnoGen:
        super().to(device)
        _pipeline(self.params.base_model).to(self.device)
        return self

    def config(self) -> dict[str, Any]:
        return {**super().config(), "defect_types": self.types, "object_category": self.object_category,
                "box_ranges": {t: r.to_json() for t, r in self.ranges.items()}, "range_source": self.range_source,
                "last_losses": {t: [h["loss"] for h in self.history if h.get("type") == t][-5:] for t in self.types}}

    def restore_config(self, config: dict[str, Any]) -> None:
        if config.get("defect_types"):
            self._build(config["defect_types"])
            self.object_category = str(config.get("object_category", ""))
            self.ranges = {t: BoxRange.from_json(v) for t, v in config.get("box_ranges", {}).items()}
            self.range_source = dict(config.get("range_source", {}))

    @property
    def losses(self) -> dict[str, list[float]]:
        """Loss per step of the last fit, per defect type."""
        return {t: [h["loss"] for h in self.history if h.get("type") == t] for t in self.types}

    # -- stage 1: the masked one-token inversion -------------------------------------------------------------
    def _shots(self, anomalies: Batch) -> dict[str, list[int]]:
        """k items per type, drawn with ``shot_seed`` (the official k-shot split draws with seed 0); types sorted."""
        g = torch.Generator().manual_seed(self.params.shot_seed)
        out = {}
        for t in sorted({lab for lab in anomalies.label if lab != GOOD}):
            idx = [i for i, lab in enumerate(anomalies.label) if lab == t and bool(anomalies.mask[i].any())]
            if not idx:
                raise ValueError(f"{self.name}.fit: no non-empty mask for defect type {t!r}")
            order = torch.randperm(len(idx), generator=g).tolist()
            out[t] = sorted(idx[j] for j in order[: self.params.shots])
        return out

    def _box_range(self, t: str, masks: torch.Tensor) -> tuple[BoxRange, str]:
        """The (object, defect) range from the chosen table, else measured on the shots (*our assumption*)."""
        choice = self.params.box_table
        auto = ("toy",) if self._toy else ("mvtec",)
        for name in (auto if choice == "auto" else (choice,) if choice != "shots" else ()):
            r = box_table(name).get(self.object_category, {}).get(t)
            if r is not None:
                return r, f"{name}:{self.object_category}/{t}"
        return range_from_masks(masks), "shots"

    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Choose the k shots per type, create one vector per type, encode shots and their flips once.

        ``normals`` are not needed (generation takes them as input). The fit runs ``fit_steps``
        (or ``fit(steps=)``) inversion steps per type, one type after the other.
        """
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies: images, masks and labels of a few real defects")
        shots = self._shots(anomalies)
        if not shots:
            raise ValueError(f"{self.name}.fit: every anomaly is labelled 'good'; give defect labels")
        cats = [m.get("category") for m in anomalies.meta if m.get("category")]
        self.object_category = self.params.object_category or (cats[0] if cats else "")
        self._toy = all(str(m.get("source", "")).startswith("toy:") for m in anomalies.meta)
        self._build(list(shots))
        parts = self.parts
        size = self._size(parts)
        data: dict[str, Any] = {"parts": parts, "z": [], "zf": [], "m": [], "mf": []}
        self.ranges, self.range_source = {}, {}
        for t, idx in shots.items():
            img = F.interpolate(anomalies.image[idx], size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
            pix = F.interpolate(anomalies.mask[idx], size=(size, size), mode="bilinear", align_corners=False)
            with torch.no_grad():
                z, zf = parts.encode_image(img), parts.encode_image(img.flip(-1))
            rule = self.params.loss_mask_rule
            data["z"].append(z)
            data["zf"].append(zf)
            data["m"].append(latent_loss_mask(pix, z.shape[-2:], rule).to(z.device))
            data["mf"].append(latent_loss_mask(pix.flip(-1), z.shape[-2:], rule).to(z.device))
            self.ranges[t], self.range_source[t] = self._box_range(t, anomalies.mask[idx])
        return data

    def planned_steps(self, steps: int | None, data: dict[str, Any]) -> int:
        data["per_type"] = self.params.fit_steps if steps is None else int(steps)
        return data["per_type"] * len(self.types)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One AdamW per type: each type is its own inversion, as the official runs one training per defect."""
        p = self.params
        return {f"type{k}": torch.optim.AdamW([v], lr=p.lr, weight_decay=p.weight_decay)
                for k, v in enumerate(self.vectors.rows)}

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> dict[str, Any]:
        """The masked ε-loss of the frozen UNet for type ``step // per_type``; only that type's vector gets a gradient.

        Draws: the batch's shot indices, the flips, the timesteps, the noise, the templates.
        """
        from anoplug.diffusion.finetune.textual_inversion import embedding_loss

        p, parts = self.params, data["parts"]
        k = min(step // data["per_type"], len(self.types) - 1)
        vec, pid = self.vectors.rows[k], self._placeholder_id(parts)
        emb = self._embedding(parts)

        def flip(z: torch.Tensor, m: torch.Tensor | None, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = (torch.rand(len(idx), generator=generator) < p.flip_p).to(z.device).view(-1, 1, 1, 1)
            return torch.where(f, data["zf"][k][idx], z), torch.where(f, data["mf"][k][idx], m)

        def prompts(idx: torch.Tensor) -> list[str]:
            j = torch.randint(0, len(TEMPLATES), (len(idx),), generator=generator)
            return [TEMPLATES[int(i)].format(PLACEHOLDER) for i in j]

        loss = embedding_loss(parts, data["z"][k], prompts, batch_size=p.batch_size, generator=generator,
                              loss_mask=data["m"][k], augment=flip,
                              inject=lambda idx: emb.injected(vec[None, None].expand(len(idx), 1, -1), [pid]))
        return {"loss": loss, "type": self.types[k]}

    # -- stage 2: boxes, then box-blended DDIM ------------------------------------------------------------------
    def _foreground(self, batch: Batch, i: int) -> torch.Tensor:
        if batch.object_mask is not None:
            return batch.object_mask[i, 0].cpu()
        return torch.ones(batch.size)

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the defect type (``conditions.defect_type``, else the ``defect_type`` parameter, else drawn),
        then one box in that type's range by the paper's rule (size, rotation, > 75 % on the object)."""
        if not self.types:
            raise NotFittedError(f"{self.name} has no fitted defect types")
        p = self.params
        asked = batch.conditions.defect_type
        out = Samples()
        for i, g in enumerate(rngs):
            t = self.types[int(torch.randint(0, len(self.types), (1,), generator=g))]  # drawn even when asked
            t = (asked[i] if asked is not None else "") or p.defect_type or t
            if t not in self.types:
                where = f"conditions.defect_type[{i}]" if asked is not None else "defect_type"
                raise (ConditionError if asked is not None else ValueError)(
                    f"{where} {t!r} is not a fitted defect type; known: {self.types}")
            r = self.ranges[t]
            rotate = {"always": True, "never": False, "table": r.rotate}[p.rotate]
            box = draw_boxes(g, r, self._foreground(batch, i), min_foreground=p.min_foreground, rotate=rotate,
                             max_draws=p.max_box_draws)
            out.append({"defect_type": t, "boxes": [box], "weak": True, "mask_kind": "box"})
        return out

    def _checked(self, samples: Samples) -> Samples:
        """Replayed records: type fitted, boxes well-formed; copies."""
        out = Samples()
        for i, s in enumerate(samples):
            if not isinstance(s, dict) or s.get("defect_type") not in self.types:
                got = s.get("defect_type") if isinstance(s, dict) else s
                raise ValueError(f"samples[{i}]['defect_type'] {got!r} was not fitted; known: {self.types}")
            boxes = s.get("boxes")
            if not isinstance(boxes, list) or not all(
                    isinstance(b, dict) and all(isinstance(b.get(k), (int, float)) for k in ("x", "y", "w", "h", "angle"))
                    for b in boxes):
                raise ValueError(f"samples[{i}]['boxes'] must be a list of {{x, y, w, h, angle, grid}} records")
            out.append({**s, "boxes": [dict(b) for b in boxes], "weak": True, "mask_kind": "box"})
        return out

    def _with_conditions(self, batch: Batch, records: Samples) -> Samples:
        """``conditions.boxes`` replace the drawn boxes (their label names the type); ``conditions.defect_type`` the type."""
        c = batch.conditions
        h, w = batch.size
        out = Samples()
        for i, rec in enumerate(records):
            rec = dict(rec)
            asked = c.defect_type[i] if c.defect_type is not None else None
            if c.boxes is not None:
                labels = {b[0] for b in c.boxes[i]}
                if len(labels) > 1:
                    raise ConditionError(f"conditions.boxes[{i}]: one learned token per image, so a sample's boxes "
                                         f"share one type; got {sorted(map(str, labels))}")
                if labels:
                    label = next(iter(labels))
                    if label not in self.types:
                        raise ConditionError(f"conditions.boxes[{i}]: label {label!r} is not a fitted defect type; "
                                             f"known: {self.types}")
                    if asked is not None and asked != label:
                        raise ConditionError(f"conditions.boxes[{i}] label {label!r} differs from "
                                             f"conditions.defect_type[{i}] {asked!r}")
                    asked = label
                rec["boxes"] = [box_from_corners(*map(float, b[1:]), h, w) for b in c.boxes[i]]
                rec["box_source"] = "conditions.boxes"
            if asked is not None:
                if asked not in self.types:
                    raise ConditionError(f"conditions.defect_type[{i}] {asked!r} is not a fitted defect type; "
                                         f"known: {self.types}")
                rec["defect_type"] = asked
            out.append(rec)
        return out

    def box_masks(self, records: Samples, h: int, w: int) -> torch.Tensor:
        """``[B,1,H,W]``: the union of each record's boxes, rasterised at ``h × w``."""
        masks = []
        for rec in records:
            m = torch.zeros(1, h, w)
            for b in rec["boxes"]:
                m = torch.maximum(m, rasterise(b, h, w))
            masks.append(m)
        return torch.stack(masks)

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Type + box (drawn, replayed or given), then DDIM with CFG from noise, the background blended in before each step.

        Draw order per sample rng: type, box candidates, then the DDIM start noise and each step's
        q(z0, t) noise. A replay still runs :meth:`sample` first, so every rng reaches its noise
        where the original call did.
        """
        from anoplug.diffusion import sampling as S
        from anoplug.diffusion.blend import resize_mask

        p = self.params
        drawn = self.sample(batch, rngs)  # advances every rng to where its noise starts, replay or not
        records = self._with_conditions(batch, drawn if samples is None else self._checked(samples))
        parts = self.parts
        size = self._size(parts)
        h, w = batch.size
        n = len(batch)
        box = self.box_masks(records, h, w).to(batch.image.device)
        work_box = self.box_masks(records, size, size).to(parts.device)
        img = batch.image if (h, w) == (size, size) else F.interpolate(batch.image, size=(size, size), mode="bicubic",
                                                                        align_corners=False).clamp(0, 1)
        z0 = parts.encode_image(img)
        keep_out = resize_mask(work_box, tuple(z0.shape[-2:]))  # nearest, as PIL resizes a '1'-mode mask
        vec = self.vectors.stacked().detach()[[self.types.index(r["defect_type"]) for r in records]].to(parts.device)
        cond = self._encode_with(parts, [self._prompt()] * n, vec)
        hooks: list[S.Hook] = [S.BlendBefore(z0, keep_out)]
        if p.guidance != 1.0:
            hooks.append(S.ClassifierFreeGuidance(parts.encode_text([""] * n), p.guidance, batched=True))
        if p.paste_background:
            hooks.append(S.ExactPaste(batch.image, box))

        def decode(z: torch.Tensor) -> torch.Tensor:
            gen = parts.decode(z)
            return gen if (h, w) == (size, size) else F.interpolate(gen, size=(h, w), mode="bicubic",
                                                                    align_corners=False).clamp(0, 1)

        out = S.sample(_unet_call(parts), parts.scheduler, shape=z0.shape, rngs=rngs, num_steps=p.steps, eta=p.eta,
                       cond=cond, device=z0.device, hooks=hooks, decode=decode).float().contiguous()
        labels = [r["defect_type"] if bool(box[i].any()) else GOOD for i, r in enumerate(records)]
        meta = [{**m, "mask_kind": "box", "weak_mask": True} for m in batch.meta]
        extras = {"refined_mask": refined_mask(box, out, batch.image, p.refine_threshold)}
        result = Batch(image=out, mask=box.clone(), label=labels, meta=meta, object_mask=batch.object_mask,
                       depth=batch.depth, text=batch.text, extras=extras)
        return result, records
