"""ComGEN (Tong et al., arXiv 2502.11712): component-aware, unsupervised logical anomaly generation.

A logical anomaly breaks a rule about *components* (one missing, one too many, one in the
wrong place, two swapped) without local damage. ComGEN treats generating one as a
compositional problem on a frozen text-to-image diffusion model, trained on normal images
only. The steps, as the sections of this module:

1. **Components** (our assumption; the paper uses normal images' components but its reachable
   text does not say how they are found): the parts of the normal images are split into
   instances (connected parts of the foreground) and grouped by colour and shape into
   component types (:mod:`.components`).
2. **Multi-Component Learning (MCL)** (paper): one learned text embedding per component
   type, plus one for the context (tray, background), by textual inversion of the frozen
   model. To bind each embedding to its own component (disentangling them) every step draws
   a random subset of the components, writes only their tokens in the prompt and restricts
   the noise-prediction loss to the context and those components (our assumption: the union
   sampling of Break-A-Scene / the attention masking of MCPL).
3. **Prompt modifications** (paper: change the count, position or type of components): the
   prompt of the edited region loses a component token (*missing*: count −1), gains one
   (*extra*: count +1), has it moved to another region (*misplaced*: position), or has two
   component tokens exchanged (*swapped*: type). Each region is denoised under its own
   prompt (regional composition of the noise predictions), the rest of the image is the
   normal image (latent blending before each step) - our realisation of "edit the prompt"
   as an edit of a given normal image. A region starts from noise (``init="noise"``, the
   paper's way: the prompt alone draws it) or from the modified layout, a collage of the
   input's own parts (``init="layout"``, our assumption, used by the shipped ``tray``
   checkpoint: on the tiny base the prompt change alone has no measurable effect).
4. **Low-density sampling** (paper, for diversity; what density is our assumption): the new
   position of an extra or misplaced component is drawn with probability ∝ (1 − D)^γ, D the
   share of normal images with a component at that pixel, inside the area components occupy.
5. **Masks: Reference Neighbour Association + Text-to-Component Residual Mapping** (paper):
   the generated image is compared with its nearest normal references (the input and the
   closest images of a memory of normals) at several scales; the residual is weighted by
   the cross-attention map of the changed components' tokens and thresholded in the edited
   region. The source is pasted outside the mask, so the mask is exact (our assumption).

Real path: ``base_model`` = a local Stable Diffusion v1.x directory (the paper's SD). Offline
default: the bundled tiny base (``tiny-base``, 64 px). The detector of the paper (CSDA) is
not part of generation and is not built here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from anoplug.conditions import ConditionError
from anoplug.diffusion.sampling import Hook, SamplingContext
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import GOOD, Batch
from anoplug_comgen import components as C

#: the four logical anomaly types of MVTec LOCO and of ``toy:tray``, by the prompt modification each is
DEFECT_TYPES: tuple[str, ...] = ("missing", "extra", "misplaced", "swapped")
#: prompt templates (textual inversion's pattern; "{}" takes the component tokens)
TEMPLATES: tuple[str, ...] = ("a photo of {}", "a rendering of {}", "a close-up photo of {}", "a good photo of {}")
CONTEXT = "<cg_ctx>"
COMPONENT = "<cg_{}>"

_PIPELINES: dict[str, Any] = {}


def _pipeline(name: str) -> Any:
    """Each base model once per process; the generator only injects vectors, it never changes weights."""
    if name not in _PIPELINES:
        from anoplug.diffusion.loading import load_pipeline

        _PIPELINES[name] = load_pipeline(name)
    return _PIPELINES[name]


class ComgenParams(Params):
    base_model: str = Field("tiny-base", description="'tiny-base' (bundled, offline), 'tiny-random', or a local "
                            "Stable Diffusion v1.x directory (the paper's base)")
    n_components: int = Field(4, ge=1, le=16, description="component types to discover in the normals (k of k-means)")
    min_instance_pixels: int = Field(4, ge=1, le=10_000, description="smallest foreground part that is a component (px)")
    component_init: str = Field("part", description="word whose embedding initialises every component token")
    context_init: str = Field("surface", description="word whose embedding initialises the context token")
    keep_probability: float = Field(0.5, gt=0.0, le=1.0, description="MCL union sampling: chance that a component's "
                                    "token (and its region in the loss) is kept in a training step")
    lr: float = Field(5e-3, gt=0.0, le=1.0, description="Adam learning rate of the embeddings (textual inversion's 5e-3)")
    batch_size: int = Field(8, ge=1, le=64, description="training batch size")
    fit_steps: int = Field(3000, ge=1, le=1_000_000, description="MCL steps (textual inversion's 3000)")
    memory_size: int = Field(16, ge=1, le=256, description="normal images kept as references for the residual masks")
    defect_type: str = Field("", description="type to generate: missing / extra / misplaced / swapped "
                             "('' = drawn per sample; conditions.defect_type overrides)")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta")
    guidance: float = Field(7.5, ge=1.0, le=30.0, description="classifier-free guidance against '' (SD's 7.5)")
    negative: Literal["normal", "empty"] = Field("normal", description="what guidance pushes away from: the normal "
                                                 "prompt (only the prompt modification is amplified) or '' (plain CFG)")
    init: Literal["noise", "layout"] = Field("noise", description="start of an edited region: noise (the paper: the "
                                             "modified prompt alone draws it) or the modified layout, a collage of the "
                                             "input's own parts (for bases too weak to follow the prompt: tiny-base)")
    strength: float = Field(1.0, gt=0.0, le=1.0, description="share of the DDIM schedule run from the start (1 = from "
                            "pure noise; below 1 the start is noised to that level, as img2img)")
    region_dilation: int = Field(2, ge=0, le=32, description="px the edited region extends beyond the component")
    low_density_power: float = Field(2.0, ge=0.0, le=20.0, description="γ of low-density sampling: new positions "
                                     "drawn ∝ (1 − density)^γ (0 = uniform over the support)")
    support_radius: int = Field(2, ge=0, le=64, description="px the support (the box where components occur in "
                                "the normals) extends beyond it")
    clearance: int = Field(3, ge=0, le=64, description="px a new component keeps from the parts already there")
    references: int = Field(4, ge=1, le=64, description="nearest normal references (besides the input) of the "
                            "residual map")
    residual_scales: tuple[Annotated[int, Field(ge=1, le=16)], ...] = Field(
        (1, 2, 4), description="scales (pooling factors) of the residual map")
    residual_threshold: float = Field(0.08, gt=0.0, lt=1.0, description="gated residual above this is anomalous "
                                      "(mean |Δ| per channel, image in [0, 1])")
    attention_floor: float = Field(0.5, ge=0.0, le=1.0, description="residual weight where the changed tokens' "
                                   "attention is 0 (1 = attention not used)")
    attention_t: float = Field(0.3, gt=0.0, lt=1.0, description="noise level (fraction of T) of the attention pass")
    paste_background: bool = Field(True, description="take the source pixels outside the mask, bit for bit")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit's draws (clustering, batches, subsets, "
                      "templates, timesteps, noise)")


class ComponentVectors(nn.Module):
    """The learned embeddings: row 0 the context, row 1 + j component type j (MCL's text-to-component pairs)."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.rows = nn.Parameter(rows.detach().clone().float())


class Comgen(LearnedGenerator):
    """Unsupervised: ``fit(normals)`` on normal images only, then ``generate(batch)`` on normal images.

    ``batch.conditions.defect_type`` (one of :data:`DEFECT_TYPES` per sample) chooses the
    logical anomaly; ``batch.object_mask`` (when present) tells where the parts are,
    otherwise a colour test against the normals' context palette does.
    """

    name = "comgen"
    title = "ComGEN: component-aware logical anomalies from learned component embeddings"
    category = "diffusion-text"
    tags = ("mask",)
    paper = Paper("Component-aware Unsupervised Logical Anomaly Generation for Industrial Anomaly Detection", "arXiv",
                  2025, "https://arxiv.org/abs/2502.11712")
    Params = ComgenParams
    requires = Requires(fit=True, weights="Stable Diffusion v1.x (offline: tiny-base)", accepts=("defect_type",))
    preserves_outside_mask: ClassVar[bool] = True  # with paste_background (the default)
    pretrained: ClassVar[dict[str, str]] = {"tray": "weights/tray"}
    #: read only by ``sample`` / ``generate_batch``: the edit (type, placement), the sampler, the mask rule.
    #: The rest describes what ``fit`` learned (base model, components, MCL settings, the reference memory)
    #: and stays as saved; ``min_instance_pixels`` is also read when parsing an input, but it defines the
    #: components the centroids were fitted on, so it stays with them.
    generation_params: ClassVar[tuple[str, ...]] = (
        "defect_type", "steps", "eta", "guidance", "negative", "init", "strength", "region_dilation",
        "low_density_power", "support_radius", "clearance", "references", "residual_scales", "residual_threshold",
        "attention_floor", "attention_t", "paste_background")

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.vectors: ComponentVectors | None = None
        self.state: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []

    # -- the frozen base model -------------------------------------------------------------------
    @property
    def parts(self) -> Any:
        from anoplug.diffusion.finetune.placeholders import PlaceholderEmbedding, embedding_slot, install_placeholders
        from anoplug.diffusion.loading import Parts

        parts = Parts.from_pipeline(_pipeline(self.params.base_model)).freeze()
        tokens = self._tokens()
        owner, attr = embedding_slot(parts.text_encoder)
        current = getattr(owner, attr)
        vocab = parts.tokenizer.get_vocab()
        if (any(t not in vocab for t in tokens) or not isinstance(current, PlaceholderEmbedding)
                or not set(parts.tokenizer.convert_tokens_to_ids(tokens)) <= set(current.ids.tolist())):
            install_placeholders(parts.text_encoder, parts.tokenizer, tokens, self.params.component_init)
        return parts

    def _tokens(self) -> list[str]:
        return [CONTEXT] + [COMPONENT.format(j) for j in range(self.params.n_components)]

    def _embedding(self, parts: Any) -> Any:
        from anoplug.diffusion.finetune.placeholders import embedding_slot

        owner, attr = embedding_slot(parts.text_encoder)
        return getattr(owner, attr)

    def _size(self, parts: Any) -> int:
        return int(parts.unet.config.sample_size) * parts.vae_factor

    def _encode(self, parts: Any, prompts: list[str]) -> torch.Tensor:
        """Text embeddings with every ComGEN token reading this generator's learned rows."""
        ids = parts.tokenizer.convert_tokens_to_ids(self._tokens())
        rows = self.vectors.rows
        with self._embedding(parts).injected(rows[None].expand(len(prompts), -1, -1), ids):
            return parts.encode_text(prompts)

    def _prompt(self, template: int, types: Sequence[int]) -> str:
        """The prompt of a region: the context token, then one token per component type present."""
        return TEMPLATES[template].format(" ".join([CONTEXT] + [COMPONENT.format(j) for j in types]))

    # -- persistence ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"vectors": self.vectors} if self.vectors is not None else {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        need = {"centroids", "feature_mean", "feature_std", "density", "memory", "palette", "templates"}
        missing = need - set(tensors)
        if missing:
            raise KeyError(sorted(missing)[0])
        self.state = {k: v.float() for k, v in tensors.items()}

    def restore_config(self, config: dict[str, Any]) -> None:
        dim = int(config.get("embedding_dim", 0))
        n = int(config.get("n_types", self.params.n_components))
        if dim:
            self.vectors = ComponentVectors(torch.zeros(n + 1, dim))

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if self.vectors is not None:
            cfg.update(embedding_dim=int(self.vectors.rows.shape[1]), n_types=int(self.vectors.rows.shape[0] - 1))
        return cfg

    @property
    def n_types(self) -> int:
        return 0 if self.vectors is None else int(self.vectors.rows.shape[0] - 1)

    # -- 1. components of the normal images -------------------------------------------------------
    def _foreground(self, image: torch.Tensor, object_mask: torch.Tensor | None) -> torch.Tensor:
        """``[B,1,H,W]`` where components are: the object mask, else pixels far from every context colour."""
        if object_mask is not None:
            return (object_mask > 0.5).float()
        pal = self.state["palette"].to(image)  # [P, 3]
        d = (image[:, None] - pal[None, :, :, None, None]).abs().mean(2).min(1).values
        return (d > 0.15).float()[:, None]

    def _parts_of(self, image: torch.Tensor, fg: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Instances of one ``[3,H,W]`` image and their component types."""
        inst = C.instances(fg[0], self.params.min_instance_pixels)
        if not inst or self.vectors is None:
            return inst, torch.zeros(len(inst), dtype=torch.long)
        f = C.instance_features(image, inst)
        return inst, C.assign(f, self.state["feature_mean"], self.state["feature_std"], self.state["centroids"])

    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Find and cluster the components, create the embeddings, encode latents and per-type loss regions once."""
        if normals is None or len(normals) == 0:
            raise ValueError(f"{self.name}.fit needs normal images")
        p = self.params
        self.state = {}
        parts = self.parts
        size = self._size(parts)
        img = F.interpolate(normals.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        obj = None if normals.object_mask is None else (
            F.interpolate(normals.object_mask, size=(size, size), mode="bilinear", align_corners=False) > 0.5).float()
        if obj is None:  # no object mask: foreground = far from the two dominant colours (context palette)
            flat = img.permute(0, 2, 3, 1).reshape(-1, 3)
            pick = torch.randint(0, len(flat), (min(len(flat), 4096),), generator=generator)
            pal, _ = C.kmeans(flat[pick], 2, generator)
            self.state["palette"] = pal
            obj = self._foreground(img, None)
        found = [C.instances(obj[i, 0], p.min_instance_pixels) for i in range(len(img))]
        feats = [C.instance_features(img[i], found[i]) for i in range(len(img))]
        allf = torch.cat(feats)
        if len(allf) == 0:
            raise ValueError(f"{self.name}.fit found no components in the normal images (empty foreground)")
        mean, std = allf.mean(0), allf.std(0).nan_to_num(1.0).clamp_min(1e-3)
        cent, labels = C.kmeans((allf - mean) / std, p.n_components, generator)
        k = len(cent)
        ctx_pixels = img.permute(0, 2, 3, 1)[obj[:, 0] < 0.5]
        if "palette" not in self.state:
            pick = torch.randint(0, len(ctx_pixels), (min(len(ctx_pixels), 4096),), generator=generator)
            self.state["palette"] = C.kmeans(ctx_pixels[pick], 2, generator)[0]
        # per image and type: the union of that type's instances, at latent size (any coverage counts)
        lat = int(parts.unet.config.sample_size)
        f = parts.vae_factor
        type_pix = torch.zeros(len(img), k, size, size)
        templates = torch.zeros(k, 1, size, size)
        best = [-1.0] * k
        start = 0
        for i, inst in enumerate(found):
            for m, j in zip(inst, labels[start:start + len(inst)].tolist()):
                type_pix[i, j] = torch.maximum(type_pix[i, j], m.float())
                a = float(m.sum())
                if best[j] < 0:  # a template footprint per type, centred (extra parts take its shape)
                    ys, xs = torch.nonzero(m, as_tuple=True)
                    templates[j, 0] = C.shift_mask(m.float(), size // 2 - int(ys.float().mean().round()),
                                                   size // 2 - int(xs.float().mean().round()))
                    best[j] = a
            start += len(inst)
        type_lat = F.max_pool2d(C.dilate(type_pix, 1), f)  # [N, k, lat, lat]
        self.state.update(centroids=cent, feature_mean=mean, feature_std=std, templates=templates,
                          density=C.layout_density(obj), memory=img[: p.memory_size].clone())
        with torch.no_grad():
            base = self._embedding(parts).base
            def word(w: str) -> torch.Tensor:
                ids = parts.tokenizer(w, add_special_tokens=False).input_ids
                if not ids:
                    raise ValueError(f"init word {w!r} tokenizes to nothing")
                return base.weight[ids[0]].detach().float()
            rows = torch.stack([word(p.context_init)] + [word(p.component_init)] * k)
        self.vectors = ComponentVectors(rows).to(self.device)
        z0 = torch.cat([parts.encode_image(img[i:i + 16]) for i in range(0, len(img), 16)]).detach()
        return {"parts": parts, "latents": z0, "type_lat": type_lat.to(z0), "lat": lat,
                "present": (type_pix.flatten(2).amax(2) > 0)}

    # -- 2. Multi-Component Learning -------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam on the embedding rows only (textual inversion; the diffusion model stays frozen)."""
        return {"vectors": torch.optim.Adam(self.vectors.parameters(), lr=self.params.lr)}

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> dict[str, Any]:
        """One MCL step: a random subset of components per item; its tokens in the prompt; loss on context + them.

        Draws, from the run's generator: the items, the subsets, the templates, then the
        timesteps and noise (in :func:`~anoplug.diffusion.finetune.common.noise_prediction_loss`).
        """
        from anoplug.diffusion.finetune.common import draw_indices, noise_prediction_loss

        p, parts = self.params, data["parts"]
        idx = draw_indices(len(data["latents"]), p.batch_size, generator)
        keep = (torch.rand(len(idx), self.n_types, generator=generator) < p.keep_probability) & data["present"][idx]
        tpl = torch.randint(0, len(TEMPLATES), (len(idx),), generator=generator)
        dropped = data["type_lat"][idx] * (~keep).to(data["type_lat"])[..., None, None]  # [b, k, h, w]
        mask = 1.0 - dropped.amax(1, keepdim=True)  # the context and the kept components
        prompts = [self._prompt(int(t), [j for j in range(self.n_types) if bool(kp[j])]) for t, kp in zip(tpl, keep)]
        z0 = data["latents"][idx]
        loss = noise_prediction_loss(parts.unet, parts.scheduler, z0, lambda: self._encode(parts, prompts),
                                     generator=generator, mask=mask)
        return {"loss": loss, "kept": float(keep.float().mean())}

    # -- 3./4. prompt modifications and low-density sampling -------------------------------------------
    def _destination(self, fg: torch.Tensor, g: torch.Generator) -> tuple[int, int] | None:
        """A new component position ∝ (1 − density)^γ inside the support, clear of the parts already there."""
        p = self.params
        dens = self.state["density"]
        support = C.dilate(C.box_of(dens > 0.05), p.support_radius)
        free = 1.0 - C.dilate(fg[0, 0], p.clearance + 2)
        w = support * free * (1.0 - dens).clamp_min(0) ** p.low_density_power
        if float(w.sum()) <= 0:
            return None
        k = int(torch.multinomial(w.flatten() / w.sum(), 1, generator=g))
        return k // w.shape[1], k % w.shape[1]

    def _plan(self, kind: str, inst: list[torch.Tensor], types: torch.Tensor, fg: torch.Tensor,
              g: torch.Generator) -> dict[str, Any] | None:
        """The record of one edit of type ``kind`` (None if this image cannot have it); all draws from ``g``.

        Draws always happen in the same order and number (instance, partner, new type,
        destination), so a sample's rng ends at the same place whatever the type.
        """
        n = len(inst)
        r_inst = torch.rand(2, generator=g)
        r_type = int(torch.randint(0, max(self.n_types, 1), (1,), generator=g))
        dest = self._destination(fg, g)
        if kind in ("missing", "misplaced") and n == 0:
            return None
        if kind in ("extra", "misplaced") and dest is None:
            return None
        if kind == "missing":
            return {"instances": [int(r_inst[0] * n)]}
        if kind == "extra":
            return {"instances": [], "new_type": r_type, "destination": list(dest)}
        if kind == "misplaced":
            return {"instances": [int(r_inst[0] * n)], "destination": list(dest)}
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if int(types[a]) != int(types[b])]
        if not pairs:
            return None
        a, b = pairs[int(r_inst[1] * len(pairs))]
        return {"instances": [a, b]}

    def _inputs(self, batch: Batch, parts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        size = self._size(parts)
        img = F.interpolate(batch.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        obj = None if batch.object_mask is None else (
            F.interpolate(batch.object_mask, size=(size, size), mode="bilinear", align_corners=False) > 0.5).float()
        return img, self._foreground(img, obj)

    def _kinds(self, batch: Batch) -> list[str | None]:
        asked = batch.conditions.defect_type
        if asked is None:
            asked = [self.params.defect_type or None] * len(batch)
        for a in asked:
            if a is not None and a not in DEFECT_TYPES:
                raise ConditionError(f"conditions.defect_type {a!r} is not a logical anomaly type of {self.name}; "
                                     f"choose one of {', '.join(DEFECT_TYPES)}")
        return list(asked)

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the defect type, the template, and the edit (instances, new type, destination)."""
        if self.vectors is None:
            raise NotFittedError(f"{self.name} has no learned components")
        parts = self.parts
        img, fg = self._inputs(batch, parts)
        out = Samples()
        for i, (g, kind) in enumerate(zip(rngs, self._kinds(batch))):
            order = torch.randperm(len(DEFECT_TYPES), generator=g).tolist()
            tpl = int(torch.randint(0, len(TEMPLATES), (1,), generator=g))
            inst, types = self._parts_of(img[i], fg[i])
            state = g.get_state()
            plan, chosen = None, None
            for k in ([kind] if kind else [DEFECT_TYPES[j] for j in order]):
                g.set_state(state)  # every candidate type sees the same draws
                plan = self._plan(k, inst, types, fg[i:i + 1], g)
                if plan is not None:
                    chosen = k
                    break
            if plan is None:
                raise ValueError(f"sample {i}: this image cannot have a {kind or 'logical'} anomaly (found "
                                 f"{len(inst)} components of {len(set(types.tolist()))} types)")
            out.append({"defect_type": chosen, "template": tpl, **plan})
        return out

    def _regions(self, record: dict[str, Any], inst: list[torch.Tensor], types: torch.Tensor,
                 size: int) -> list[tuple[torch.Tensor, list[int], int | None, int | None]]:
        """The edited regions of one record: (pixel mask, component types in its prompt, removed, inserted type).

        Every region's prompt has the context token and the types the region should show:
        the prompt modification of the record's defect type.
        """
        kind, d = record["defect_type"], self.params.region_dilation
        ids = record["instances"]
        for j in ids:
            if not 0 <= j < len(inst):
                raise ValueError(f"record instance {j} does not exist in this image ({len(inst)} components)")

        def moved(m: torch.Tensor, yx: Sequence[int]) -> torch.Tensor:
            ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
            return C.shift_mask(m.float(), int(yx[0]) - int(ys.float().mean().round()),
                                int(yx[1]) - int(xs.float().mean().round()))

        if kind == "missing":
            k = ids[0]
            return [(C.dilate(inst[k].float(), d), [], int(types[k]), None)]
        if kind == "extra":
            t = int(record["new_type"]) % max(self.n_types, 1)
            have = [k for k in range(len(inst)) if int(types[k]) == t]
            src = inst[have[0]].float() if have else self.state["templates"][t, 0]
            return [(C.dilate(moved(src, record["destination"]), d), [t], None, t)]
        if kind == "misplaced":
            k = ids[0]
            t = int(types[k])
            return [(C.dilate(inst[k].float(), d), [], t, None),
                    (C.dilate(moved(inst[k].float(), record["destination"]), d), [t], None, t)]
        a, b = ids
        ta, tb = int(types[a]), int(types[b])
        ca = [int(v.float().mean().round()) for v in torch.nonzero(inst[a], as_tuple=True)]
        cb = [int(v.float().mean().round()) for v in torch.nonzero(inst[b], as_tuple=True)]
        ra = torch.maximum(inst[a].float(), moved(inst[b].float(), ca))
        rb = torch.maximum(inst[b].float(), moved(inst[a].float(), cb))
        return [(C.dilate(ra, d), [tb], ta, tb), (C.dilate(rb, d), [ta], tb, ta)]

    # -- generation: regional prompts on the frozen model -----------------------------------------------
    def _model(self, parts: Any) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
        """ε under a plain condition (tensor), or the regional composition ``Σ_r w_r ε(prompt_r)`` (dict)."""
        def call(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            if isinstance(cond, torch.Tensor):
                return parts.unet(x, t, encoder_hidden_states=cond).sample
            emb, w = cond["embeddings"], cond["weights"]  # [B, R, L, D], [B, R, 1, h, w]
            b, r = emb.shape[:2]
            xr = x[:, None].expand(b, r, *x.shape[1:]).reshape(b * r, *x.shape[1:])
            e = parts.unet(xr, t, encoder_hidden_states=emb.flatten(0, 1)).sample.view(b, r, *x.shape[1:])
            return (w * e).sum(1)
        return call

    @torch.no_grad()
    def token_attention(self, parts: Any, latents: torch.Tensor, prompts: list[str], rngs: Sequence[torch.Generator]
                        ) -> torch.Tensor:
        """Text-to-component maps ``[B, K, h, w]``: cross-attention of each component token, mean over layers.

        One pass of the frozen UNet on the latent noised to ``attention_t``·T (noise from each
        sample's rng), under the prompt naming every component type.
        """
        from anoplug.diffusion.attention import AttentionState, attention_processors
        from anoplug.diffusion.blend import per_sample_randn

        t = torch.tensor(int(self.params.attention_t * parts.scheduler.config.num_train_timesteps), device=latents.device)
        x = parts.scheduler.add_noise(latents, per_sample_randn(latents.shape[1:], rngs, latents.device), t.reshape(1))
        ids = parts.tokenize(prompts)
        cols = [torch.nonzero(ids == tid, as_tuple=True) for tid in parts.tokenizer.convert_tokens_to_ids(
            [COMPONENT.format(j) for j in range(self.n_types)])]
        cond = self._encode(parts, prompts)
        h, w = latents.shape[-2:]
        state = AttentionState(latent_size=(h, w))
        with attention_processors(parts.unet, state, capture=lambda n: True, reweight=[]):
            parts.unet(x, t, encoder_hidden_states=cond)
        maps = torch.zeros(len(prompts), self.n_types, h, w, device=latents.device)
        for layer in state.maps.values():
            a = layer[-1]  # [B, pixels, tokens]
            s = int(round((a.shape[1] * w / h) ** 0.5))
            a2 = a.transpose(1, 2).reshape(a.shape[0], a.shape[2], a.shape[1] // s, s)
            a2 = F.interpolate(a2, size=(h, w), mode="bilinear", align_corners=False)
            for j, (bi, pos) in enumerate(cols):
                maps[bi, j] += a2[bi, pos]
        return maps / max(len(state.maps), 1)

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Plan (or replay) the edits, denoise each region under its modified prompt, map residuals to masks.

        Draw order per sample rng: the plan (:meth:`sample`, also on replay), the DDIM noise,
        then the attention pass's noise.
        """
        from anoplug.diffusion import sampling as S

        p = self.params
        drawn = self.sample(batch, rngs)
        samples = drawn if samples is None else Samples(dict(s) for s in samples)
        parts = self.parts
        size = self._size(parts)
        n, (h, w) = len(batch), batch.size
        img, fg = self._inputs(batch, parts)
        z0 = parts.encode_image(img)
        lat = z0.shape[-1]
        f = size // lat
        # 3. the regions and their modified prompts (at most two per edit; unused ones weigh 0)
        region_pix = torch.zeros(n, 2, 1, size, size)
        prompts: list[str] = []
        removed = torch.full((n, 2), -1)
        inserted = torch.full((n, 2), -1)
        for i, rec in enumerate(samples):
            if rec.get("defect_type") not in DEFECT_TYPES:
                raise ValueError(f"samples[{i}]['defect_type'] must be one of {DEFECT_TYPES}, got {rec.get('defect_type')!r}")
            inst, types = self._parts_of(img[i], fg[i])
            regs = self._regions(rec, inst, types, size)
            prompts.append(self._prompt(rec["template"], sorted(set(types.tolist()))))  # the normal prompt
            for r in range(2):
                if r < len(regs):
                    region_pix[i, r, 0] = regs[r][0]
                    removed[i, r] = -1 if regs[r][2] is None else regs[r][2]
                    inserted[i, r] = -1 if regs[r][3] is None else regs[r][3]
                prompts.append(self._prompt(rec["template"], regs[r][1] if r < len(regs) else []))
        start_img = img
        if p.init == "layout":  # the modified layout as the start: the input's own parts removed / copied / exchanged
            start_img = torch.stack([self._collage(img[i], rec, *self._parts_of(img[i], fg[i]))
                                     for i, rec in enumerate(samples)])
        z_start = parts.encode_image(start_img)
        emb = self._encode(parts, prompts).view(n, 3, -1, parts.text_encoder.config.hidden_size)
        reg_lat = F.max_pool2d(region_pix.flatten(0, 1), f).view(n, 2, 1, lat, lat).to(z0)
        share = reg_lat / reg_lat.sum(1, keepdim=True).clamp_min(1.0)
        weights = torch.cat([1.0 - share.sum(1, keepdim=True), share], 1)  # [B, 3, 1, lat, lat]
        edit_lat = reg_lat.amax(1)
        first = min(p.steps - 1, int(round((1.0 - p.strength) * p.steps)))
        # the negative branch: the normal prompt (so only the prompt modification is amplified) or ""
        negative = emb[:, 0] if p.negative == "normal" else parts.encode_text([""] * n)
        hooks: list[S.Hook] = [_StartAt(z_start, first), S.BlendBefore(z_start, edit_lat),
                               _Guidance(negative, p.guidance, first)]
        z = S.sample(self._model(parts), parts.scheduler, shape=z0.shape, rngs=rngs, num_steps=p.steps, eta=p.eta,
                     cond={"embeddings": emb, "weights": weights}, hooks=hooks, device=z0.device)
        gen = parts.decode(z)
        # 5. Reference Neighbour Association + Text-to-Component Residual Mapping
        mem = self.state["memory"].to(gen)
        near = C.nearest_references(img, mem, p.references)
        refs = torch.cat([img[:, None], mem[near]], 1)
        residual = C.reference_residual(gen, refs, p.residual_scales)
        normal_prompts = prompts[0::3]
        att_in = self.token_attention(parts, z0, normal_prompts, rngs)
        att_gen = self.token_attention(parts, parts.encode_image(gen), normal_prompts, rngs)
        gate = self._gate(att_in, att_gen, removed, inserted, region_pix, size)
        region = region_pix.amax(1)
        mask = C.residual_mask(residual, gate, region, threshold=p.residual_threshold, attention_floor=p.attention_floor)
        out_mask = mask if (h, w) == (size, size) else (
            F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False) > 0.5).float()
        out_img = gen if (h, w) == (size, size) else F.interpolate(gen, size=(h, w), mode="bicubic",
                                                                   align_corners=False).clamp(0, 1)
        if p.paste_background:
            out_img = torch.where(out_mask.expand_as(out_img) > 0.5, out_img, batch.image)
        labels = [s["defect_type"] if bool(out_mask[i].any()) else GOOD for i, s in enumerate(samples)]
        result = Batch(image=out_img.float().contiguous(), mask=out_mask.contiguous(), label=labels,
                       meta=[dict(m) for m in batch.meta], object_mask=batch.object_mask, depth=batch.depth,
                       text=batch.text)
        return result, samples

    def _collage(self, image: torch.Tensor, record: dict[str, Any], inst: list[torch.Tensor],
                 types: torch.Tensor) -> torch.Tensor:
        """The modified layout in pixels (``init="layout"``): removed parts filled from their surroundings,
        added / moved / exchanged parts copied from the input to their new place."""
        d = self.params.region_dilation
        kind, ids = record["defect_type"], record["instances"]

        def centre(m: torch.Tensor) -> list[int]:
            return [int(v.float().mean().round()) for v in torch.nonzero(m > 0.5, as_tuple=True)]

        def paste(base: torch.Tensor, m: torch.Tensor, to: Sequence[int]) -> torch.Tensor:
            c = centre(m)
            dy, dx = int(to[0]) - c[0], int(to[1]) - c[1]
            mm = C.shift_mask(C.dilate(m.float(), 1), dy, dx) > 0.5
            return torch.where(mm[None], C.shift_mask(image, dy, dx), base)

        if kind == "missing":
            return C.fill_holes(image, C.dilate(inst[ids[0]].float(), d))
        if kind == "extra":
            t = int(record["new_type"]) % max(self.n_types, 1)
            have = [k for k in range(len(inst)) if int(types[k]) == t]
            return paste(image, inst[have[0]], record["destination"]) if have else image
        if kind == "misplaced":
            k = ids[0]
            return paste(C.fill_holes(image, C.dilate(inst[k].float(), d)), inst[k], record["destination"])
        a, b = ids
        holes = torch.maximum(C.dilate(inst[a].float(), d), C.dilate(inst[b].float(), d))
        out = C.fill_holes(image, holes)
        return paste(paste(out, inst[a], centre(inst[b])), inst[b], centre(inst[a]))

    @staticmethod
    def _gate(att_in: torch.Tensor, att_gen: torch.Tensor, removed: torch.Tensor, inserted: torch.Tensor,
              region_pix: torch.Tensor, size: int) -> torch.Tensor:
        """``[B,1,H,W]`` in [0, 1]: per region, the removed type's map on the input and the inserted type's map on
        the output, each scaled to 1 at its maximum inside the region; the maximum over regions."""
        n = len(att_in)
        gate = torch.zeros(n, 1, size, size)
        for i in range(n):
            for r in range(region_pix.shape[1]):
                reg = region_pix[i, r, 0] > 0.5
                if not bool(reg.any()):
                    continue
                for maps, typ in ((att_in, int(removed[i, r])), (att_gen, int(inserted[i, r]))):
                    if typ < 0:
                        continue
                    a = F.interpolate(maps[i:i + 1, typ:typ + 1], size=(size, size), mode="bilinear",
                                      align_corners=False)[0, 0].cpu()
                    a = torch.where(reg, a, torch.zeros_like(a))
                    top = float(a.max())
                    if top > 0:
                        gate[i, 0] = torch.maximum(gate[i, 0], a / top)
        return gate



@dataclass(eq=False)
class _StartAt(Hook):
    """Until step ``first`` the latent is held at q(z_start, t): the run effectively starts there (img2img)."""

    z_start: torch.Tensor
    first: int

    def before_step(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        if ctx.i > self.first:
            return x
        return ctx.scheduler.add_noise(self.z_start, ctx.noise(self.z_start.shape[1:]), ctx.t.reshape(1))


@dataclass(eq=False)
class _Guidance(Hook):
    """ε = ε_neg + s·(ε_mod − ε_neg); no model call before step ``first`` (its result would be discarded)."""

    negative: torch.Tensor
    scale: float
    first: int
    guides: ClassVar[bool] = True

    def guide(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        if ctx.i < self.first:
            return torch.zeros_like(x)
        eps = ctx.forward(x, ctx.cond, "cond")
        if self.scale <= 1:
            return eps
        neg = ctx.forward(x, self.negative, "uncond")
        return neg + self.scale * (eps - neg)
