"""AnomalyDiffusion (Hu et al., AAAI 2024): few-shot anomaly generation with a spatial anomaly embedding.

A frozen text-to-image latent diffusion model is steered by the placeholder "*" in a
prompt, which expands to 4 learned *appearance* vectors per anomaly type (e_a) followed by
4 *spatial* vectors computed by a mask encoder from the anomaly mask (e_s). Only e_a and
the encoder train, with the noise-prediction loss restricted to the mask. Generation
denoises a normal image's latent with the background blended back before every DDIM step
(η = 1, no guidance), so the anomaly appears inside the mask. Optionally, adaptive
attention re-weighting (ARR) raises the cross-attention logits of the 8 tokens where the
latent has moved least from the normal one. Masks come from a second, per-type textual
inversion (16 tokens) trained on the mask images themselves.

Real path: ``base_model="CompVis/ldm-text2im-large-256"`` (the LDM-BERT checkpoint of the
paper, diffusers format). Offline default: the bundled tiny base model (``tiny-base``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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

#: Prompt templates ("*" is the placeholder). The original samples from the 80 ``imagenet_templates_small``
#: of textual inversion; these few follow the same pattern.
TEMPLATES: tuple[str, ...] = ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
                              "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}",
                              "a photo of the small {}")

APPEAR = "<ad_{}>"
SPATIAL = "<sp_{}>"
MASKTOK = "<mk_{}>"

_PIPELINES: dict[str, Any] = {}


def _pipeline(name: str) -> Any:
    """Load each base model once per process (generators only inject vectors; they never mutate weights)."""
    if name not in _PIPELINES:
        from anoplug.diffusion.loading import load_pipeline

        _PIPELINES[name] = load_pipeline(name)
    return _PIPELINES[name]


def latent_mask(pix_mask: torch.Tensor, size: Sequence[int], threshold: float = 0.5,
                mode: str = "bilinear") -> torch.Tensor:
    """The pixel mask at latent size, binarised at ``>= threshold``.

    The original resizes with torchvision 0.13's ``Resize`` on a tensor, which is bilinear
    without antialiasing: a thin defect survives where it crosses a sampling point and vanishes
    elsewhere. ``mode="area"`` averages instead (a 2-px line at 1/8 scale becomes 0.25 everywhere).
    """
    if mode == "area":
        m = F.interpolate(pix_mask.float(), size=tuple(size), mode="area")
    else:
        m = F.interpolate(pix_mask.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return (m >= threshold).float()


def binarise_generated_mask(decoded01: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """A generated mask image (decoded, in [0,1]) to {0,1}: channel mean ``> threshold``.

    The original thresholds the raw decoder output in [-1,1] at 0.8, i.e. 0.9 on [0,1].
    """
    return (decoded01.mean(1, keepdim=True) > threshold).float()


class AnomalyDiffusionParams(Params):
    base_model: str = Field("tiny-base", description="'tiny-base' (bundled, offline), 'tiny-random', or a hub id / "
                            "local dir, e.g. CompVis/ldm-text2im-large-256 (the paper's)")
    resolution: int = Field(0, ge=0, le=1024, description="working size in px (0 = the base model's native size)")
    appearance_tokens: int = Field(4, ge=1, le=16, description="learned appearance vectors e_a per anomaly type")
    spatial_tokens: int = Field(4, ge=1, le=16, description="mask-derived spatial vectors e_s per sample")
    init_word: str = Field("anomaly", description="word whose embedding initialises e_a")
    encoder_width: int = Field(32, ge=4, le=512, description="channels of the mask (spatial) encoder")
    lr: float = Field(2e-2, gt=0, le=1.0, description="Adam learning rate (5e-3 × batch 4, as scale_lr does)")
    batch_size: int = Field(4, ge=1, le=64, description="training batch size")
    fit_steps: int = Field(2000, ge=1, le=1_000_000, description="training steps of e_a + encoder (first checkpoint: 2000)")
    augment: bool = Field(True, description="flips + small rotation with p=0.5 per batch (data_enhance)")
    use_all_anomalies: bool = Field(False, description="train on all given anomalies (original: first N//3+1 per type)")
    steps: int = Field(200, ge=1, le=1000, description="DDIM steps for image synthesis")
    eta: float = Field(1.0, ge=0.0, le=1.0, description="DDIM eta for image synthesis")
    guidance: float = Field(1.0, ge=1.0, le=30.0,
                            description="classifier-free guidance against '' for image synthesis (original: 1 = none)")
    blend: Literal["before", "after", "pixel_x0", "composite", "none"] = Field(
        "before", description="when the normal background is blended back (original: before every step)")
    latent_mask_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="binarise the mask resized to latent size at "
                                         "(>= this, as the original)")
    latent_mask_resize: Literal["bilinear", "area"] = Field(
        "bilinear", description="mask to latent size: plain bilinear (the original's torchvision 0.13 Resize on a "
        "tensor, no antialias) or area-averaged (keeps thin defects' share; older anoplug default)")
    adaptive_reweighting: bool = Field(False, description="ARR: re-weight cross-attention of the 8 tokens (use for textures)")
    arr_radius: float = Field(0.25, ge=0.0, le=1.0, description="ARR dilation radius as a fraction of the latent side "
                              "at t=0.9T (8 px of 32 in the original)")
    arr_max_weight: float = Field(1.5, ge=1.0, le=10.0, description="ARR clamps weights to [1, this]")
    arr_weight_bos: bool = Field(True, description="ARR also re-weights the BOS column (a quirk of the original)")
    paste_background: bool = Field(True, description="paste the source pixels outside the mask bit-exactly")
    anomaly_type: str = Field("", description="type to generate ('' = drawn per sample among the fitted types)")
    mask_tokens: int = Field(16, ge=1, le=32, description="textual-inversion tokens of the mask model")
    mask_init_word: str = Field("crack", description="word whose embedding initialises the mask tokens")
    mask_fit_steps: int = Field(30001, ge=0, le=100_000, description="mask-model training steps per type "
                                "(0 = no mask model: generate then needs conditions.target_mask)")
    mask_steps: int = Field(100, ge=1, le=1000, description="DDIM steps for mask synthesis")
    mask_eta: float = Field(1.0, ge=0.0, le=1.0, description="DDIM eta for mask synthesis")
    mask_guidance: float = Field(5.0, ge=1.0, le=30.0, description="classifier-free guidance for mask synthesis")
    mask_threshold: float = Field(0.9, gt=0.0, lt=1.0, description="decoded channel mean in [0,1] above this is "
                                  "anomalous (the original's 0.8 on the raw [-1,1] decoder output)")
    mask_attempts: int = Field(8, ge=1, le=100, description="masks drawn per sample until one passes the border check")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit's draws (batches, augmentation, timesteps, noise, "
                      "templates); fit(seed=) overrides it")


class SpatialEncoder(nn.Module):
    """Mask → spatial tokens. A small stand-in for the pSp encoder: strided convs keep *where* the mask is
    (no global pooling), a linear layer maps the 4×4 feature map to the tokens."""

    def __init__(self, n_tokens: int, dim: int, width: int = 32, size: int = 64) -> None:
        super().__init__()
        self.n_tokens, self.dim, self.size = n_tokens, dim, size
        chans = [1, width // 2, width, width, width]
        layers: list[nn.Module] = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.convs = nn.Sequential(*layers)  # 64 → 4
        self.head = nn.Linear(width * 16, n_tokens * dim)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(mask.float(), size=(self.size, self.size), mode="bilinear", align_corners=False) * 2 - 1
        return self.head(self.convs(x).flatten(1)).view(-1, self.n_tokens, self.dim)


def arr_weights(x_t: torch.Tensor, z0: torch.Tensor, m: torch.Tensor, max_weight: float) -> torch.Tensor:
    """Adaptive attention weights: large where the latent moved least from the normal one, in [1, max].

    w′ = m̃/d with d the channel mean of (m̃·(x_t − z0))²; w = |m̃|·w′/Σw′, zeros → 1, clamp.
    """
    d = ((m * (x_t - z0)) ** 2).mean(1, keepdim=True)
    w = torch.where(d > 0, m / d.clamp_min(1e-20), torch.zeros_like(d))
    total = w.sum((2, 3), keepdim=True)
    w = torch.where(total > 0, m.sum((2, 3), keepdim=True) * w / total.clamp_min(1e-20), torch.zeros_like(w))
    return torch.where(w == 0, torch.ones_like(w), w).clamp(1.0, max_weight)


def arr_radius(t: int, n_train: int, fraction: float, latent_side: int) -> int:
    """Dilation radius: ⌊(t + 0.1·T)/T · fraction · side⌋ — (t+100)·8/1000 for a 32-px latent."""
    return int(math.floor((t + 0.1 * n_train) / n_train * fraction * latent_side))


def _unet_call(parts: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The sampling loop's model call: ε from the UNet under text embeddings."""
    return lambda x, t, cond: parts.unet(x, t, encoder_hidden_states=cond).sample


def dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    return m if r <= 0 else F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)


def border_ok(mask: torch.Tensor) -> torch.Tensor:
    """The original's ``check_mask``: reject masks with more than W/3 positives in any border row or column."""
    h, w = mask.shape[-2:]
    m = mask[:, 0]
    rows = torch.stack([m[:, 0, :].sum(-1), m[:, -1, :].sum(-1), m[:, :, 0].sum(-1), m[:, :, -1].sum(-1)], -1)
    return (rows <= w / 3).all(-1) & (m.sum((1, 2)) > 0)


class _Vectors(nn.Module):
    """The learned token vectors: e_a of every type (one tensor, one optimiser) and one mask-model tensor per type
    (each its own textual inversion, so each gets its own optimiser)."""

    def __init__(self, appearance: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.appearance = nn.Parameter(appearance)  # [n_types, n_a, D]
        self.mask = nn.ParameterList([nn.Parameter(m.clone()) for m in mask])  # n_types × [n_m, D]


class AnomalyDiffusion(LearnedGenerator):
    """Few-shot: ``fit(normals, anomalies)`` on a few real defects per type, then ``generate(batch)``.

    ``batch.conditions.target_mask`` (optional) says where the defect goes; without it the
    mask model draws one per sample.
    """

    name = "anomalydiffusion"
    title = "AnomalyDiffusion: spatial anomaly embedding + blended latent diffusion"
    category = "diffusion-image"
    tags = ("mask",)
    paper = Paper("AnomalyDiffusion: Few-Shot Anomaly Image Generation with Diffusion Model", "AAAI", 2024,
                  "https://arxiv.org/abs/2312.05767", "https://github.com/sjtuplayer/anomalydiffusion")
    Params = AnomalyDiffusionParams
    generation_params = ("steps", "eta", "guidance", "blend", "latent_mask_threshold", "latent_mask_resize",
                         "adaptive_reweighting", "arr_radius", "arr_max_weight", "arr_weight_bos",
                         "paste_background", "anomaly_type", "mask_steps", "mask_eta", "mask_guidance",
                         "mask_threshold", "mask_attempts")
    requires = Requires(fit=True, anomalies=True, weights="CompVis/ldm-text2im-large-256 (offline: tiny-base)",
                        accepts=("target_mask",))
    preserves_outside_mask: ClassVar[bool] = True  # with paste_background (the default)

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.types: list[str] = []
        self.encoder: SpatialEncoder | None = None
        self.vectors: _Vectors | None = None
        self.history: list[dict] = []

    @property
    def appearance(self) -> torch.Tensor | None:
        """e_a, ``[n_types, n_a, D]`` (the trained parameter itself: copy into it in place)."""
        return None if self.vectors is None else self.vectors.appearance

    @property
    def mask_vectors(self) -> torch.Tensor | None:
        """The mask model's token vectors, ``[n_types, n_m, D]`` (a copy)."""
        return None if self.vectors is None else torch.stack([v.detach() for v in self.vectors.mask])

    @property
    def losses(self) -> dict[str, list[float]]:
        """Loss per step of the last fit: ``"image"`` (e_a + encoder) and ``"mask"`` (every type's mask model, in turn)."""
        return {ph: [h["loss"] for h in self.history if h.get("phase") == ph] for ph in ("image", "mask")}

    # -- the frozen base model --------------------------------------------------------------
    @property
    def parts(self) -> Any:
        from anoplug.diffusion.loading import Parts

        parts = Parts.from_pipeline(_pipeline(self.params.base_model)).freeze()
        p = self.params
        tokens = [APPEAR.format(i) for i in range(p.appearance_tokens)] + [SPATIAL.format(i) for i in range(p.spatial_tokens)]
        tokens += [MASKTOK.format(i) for i in range(p.mask_tokens)]
        emb = parts.text_encoder
        from anoplug.diffusion.inversion import PlaceholderEmbedding, embedding_slot, install_placeholders

        owner, attr = embedding_slot(emb)
        current = getattr(owner, attr)
        if not isinstance(current, PlaceholderEmbedding) or not set(parts.tokenizer.convert_tokens_to_ids(tokens)) <= set(
                current.ids.tolist()) or any(t not in parts.tokenizer.get_vocab() for t in tokens):
            install_placeholders(emb, parts.tokenizer, tokens, self.params.init_word)
        return parts

    def _embedding(self, parts: Any) -> Any:
        from anoplug.diffusion.inversion import embedding_slot

        owner, attr = embedding_slot(parts.text_encoder)
        return getattr(owner, attr)

    def _size(self, parts: Any) -> int:
        if self.params.resolution:
            return self.params.resolution
        return int(parts.unet.config.sample_size) * parts.vae_factor

    def _ids(self, parts: Any, prefix: str, n: int) -> list[int]:
        return parts.tokenizer.convert_tokens_to_ids([prefix.format(i) for i in range(n)])

    def _star(self) -> str:
        p = self.params
        return " ".join([APPEAR.format(i) for i in range(p.appearance_tokens)]
                        + [SPATIAL.format(i) for i in range(p.spatial_tokens)])

    def _mask_star(self) -> str:
        return " ".join(MASKTOK.format(i) for i in range(self.params.mask_tokens))

    def _build(self, parts: Any, types: Sequence[str]) -> None:
        p = self.params
        dim = int(self._embedding(parts).base.weight.shape[1])
        init = self._embedding(parts).base.weight[parts.tokenizer(p.init_word, add_special_tokens=False).input_ids[0]]
        minit = self._embedding(parts).base.weight[parts.tokenizer(p.mask_init_word, add_special_tokens=False).input_ids[0]]
        self.types = list(types)
        self.vectors = _Vectors(init.detach().float().clone()[None, None].repeat(len(types), p.appearance_tokens, 1),
                                minit.detach().float().clone()[None, None].repeat(len(types), p.mask_tokens, 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the encoder's initial weights are part of the method's configuration
            self.encoder = SpatialEncoder(p.spatial_tokens, dim, p.encoder_width)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder} if self.encoder is not None else {}

    def to(self, device: str | torch.device) -> AnomalyDiffusion:
        """Move the learned tensors (in place) and the (shared) base pipeline."""
        super().to(device)
        _pipeline(self.params.base_model).to(self.device)
        if self.vectors is not None:
            self.vectors.to(self.device)
        return self

    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.vectors is None:
            return {}
        return {"appearance": self.appearance.detach(), "mask_vectors": self.mask_vectors}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved vectors into the learned ones in place (an optimiser may hold them: resume)."""
        if not tensors:
            return
        if self.vectors is None:
            raise ValueError(f"{self.name}: saved vectors {sorted(tensors)} but no fitted anomaly types to load them into")
        if set(tensors) != {"appearance", "mask_vectors"}:
            raise ValueError(f"{self.name}: expected extra tensors appearance and mask_vectors, got {sorted(tensors)}")
        for key, have in (("appearance", self.appearance), ("mask_vectors", self.mask_vectors)):
            if tuple(tensors[key].shape) != tuple(have.shape):
                raise ValueError(f"{self.name}: saved {key} is {list(tensors[key].shape)}, this model has {list(have.shape)}")
        with torch.no_grad():
            self.vectors.appearance.copy_(tensors["appearance"])
            for k, v in enumerate(self.vectors.mask):
                v.copy_(tensors["mask_vectors"][k])

    def config(self) -> dict[str, Any]:
        return {**super().config(), "anomaly_types": self.types, "losses": {k: v[-5:] for k, v in self.losses.items()}}

    def restore_config(self, config: dict[str, Any]) -> None:
        if config.get("anomaly_types"):
            self._build(self.parts, config["anomaly_types"])

    # -- training ------------------------------------------------------------------------------
    def _select(self, anomalies: Batch) -> list[int]:
        """The first ⌊N/3⌋+1 images of each type by index (the original's split), or all of them."""
        chosen: list[int] = []
        for t in dict.fromkeys(anomalies.label):
            idx = [i for i, lab in enumerate(anomalies.label) if lab == t]
            chosen += idx if self.params.use_all_anomalies else idx[: len(idx) // 3 + 1]
        return chosen

    def _augment(self, g: torch.Generator) -> Callable:
        """Per batch with p=0.5: flips (p=0.5 each) and a rotation by 0–20°, applied to latents and masks alike."""
        def aug(z: torch.Tensor, m: torch.Tensor | None, idx: torch.Tensor) -> tuple:
            if not self.params.augment or float(torch.rand(1, generator=g)) >= 0.5:
                return z, m
            n = len(z)
            vf, hf = torch.rand(n, generator=g) < 0.5, torch.rand(n, generator=g) < 0.5
            ang = torch.randint(0, 21, (n,), generator=g).float() * math.pi / 180
            cos, sin = torch.cos(ang), torch.sin(ang)
            sx, sy = torch.where(hf, -1.0, 1.0), torch.where(vf, -1.0, 1.0)
            theta = torch.stack([torch.stack([cos * sx, -sin * sy, torch.zeros(n)], -1),
                                 torch.stack([sin * sx, cos * sy, torch.zeros(n)], -1)], 1).to(z.device)
            grid = F.affine_grid(theta, list(z.shape), align_corners=False)
            z = F.grid_sample(z, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            if m is not None:
                m = (F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
            return z, m
        return aug

    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Pick the training shots, create e_a, the mask vectors and the encoder, encode images and masks once.

        ``normals`` are not needed for training (generation takes them as input). The fit has
        two phases: ``fit_steps`` (or ``fit(steps=)``) steps of e_a + the spatial encoder with
        the masked loss, then ``mask_fit_steps`` steps of the mask model per type.
        """
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies (images, masks and labels of real defects)")
        if not all(bool(anomalies.mask[i].any()) and anomalies.label[i] != GOOD for i in range(len(anomalies))):
            raise ValueError(f"{self.name}.fit: every anomaly needs a non-empty mask and a defect label (not 'good')")
        parts = self.parts
        data = anomalies[self._select(anomalies)]
        types = list(dict.fromkeys(data.label))
        self._build(parts, types)
        size = self._size(parts)
        img = F.interpolate(data.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        pix_mask = (F.interpolate(data.mask, size=(size, size), mode="bilinear", align_corners=False) > 0.5).float()
        with torch.no_grad():
            z0 = parts.encode_image(img)
            mask_latents = parts.encode_image(pix_mask.expand(-1, 3, -1, -1))
        return {"parts": parts, "latents": z0, "pix_mask": pix_mask, "lat_mask": self._latent_mask(pix_mask, z0.shape[-2:]),
                "type_idx": torch.tensor([types.index(t) for t in data.label]), "mask_latents": mask_latents,
                "of_type": [[i for i, lab in enumerate(data.label) if lab == t] for t in types]}

    def planned_steps(self, steps: int | None, data: dict[str, Any]) -> int:
        data["image_steps"] = self.params.fit_steps if steps is None else int(steps)
        return data["image_steps"] + len(self.types) * self.params.mask_fit_steps

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam (lr ``lr``) on e_a + the encoder, and a fresh Adam per type's mask vectors (as one inversion each)."""
        lr = self.params.lr
        opts = {"image": torch.optim.Adam([self.vectors.appearance, *self.encoder.parameters()], lr=lr)}
        opts.update({f"mask{k}": torch.optim.Adam([v], lr=lr) for k, v in enumerate(self.vectors.mask)})
        return opts

    def _templates(self, star: str, g: torch.Generator) -> Callable[[torch.Tensor], list[str]]:
        return lambda idx: [TEMPLATES[int(j)].format(star) for j in torch.randint(0, len(TEMPLATES), (len(idx),), generator=g)]

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> dict[str, Any]:
        """Image phase: masked ε-loss through e_a + the encoder; then per type, the mask model's unmasked ε-loss.

        Only the current phase's tensors get gradients, so only its optimiser moves.
        """
        from anoplug.diffusion.inversion import embedding_loss

        p, parts = self.params, data["parts"]
        emb = self._embedding(parts)
        if step < data["image_steps"]:
            ids = self._ids(parts, APPEAR, p.appearance_tokens) + self._ids(parts, SPATIAL, p.spatial_tokens)

            def inject(idx: torch.Tensor) -> Any:
                vec = torch.cat([self.vectors.appearance[data["type_idx"][idx]], self.encoder(data["pix_mask"][idx])], 1)
                return emb.injected(vec, ids)

            loss = embedding_loss(parts, data["latents"], self._templates(self._star(), generator), batch_size=p.batch_size,
                                  generator=generator, loss_mask=data["lat_mask"], inject=inject,
                                  augment=self._augment(generator))
            return {"loss": loss, "phase": "image"}
        k = (step - data["image_steps"]) // p.mask_fit_steps
        vec, ids = self.vectors.mask[k], self._ids(parts, MASKTOK, p.mask_tokens)
        loss = embedding_loss(parts, data["mask_latents"][data["of_type"][k]], self._templates(self._mask_star(), generator),
                              batch_size=p.batch_size, generator=generator,
                              inject=lambda sel: emb.injected(vec[None].expand(len(sel), -1, -1), ids))
        return {"loss": loss, "phase": "mask", "type": self.types[k]}

    def _latent_mask(self, pix_mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return latent_mask(pix_mask, size, self.params.latent_mask_threshold, self.params.latent_mask_resize)

    # -- generation ---------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the anomaly type and the prompt template (noise is drawn later from the same rng)."""
        if not self.types:
            raise NotFittedError(f"{self.name} has no fitted anomaly types")
        out = Samples()
        for g in rngs:
            if self.params.anomaly_type:
                if self.params.anomaly_type not in self.types:
                    raise ValueError(f"anomaly_type {self.params.anomaly_type!r} was not fitted; known: {self.types}")
                t = self.params.anomaly_type
            else:
                t = self.types[int(torch.randint(0, len(self.types), (1,), generator=g))]
            out.append({"anomaly_type": t, "template": int(torch.randint(0, len(TEMPLATES), (1,), generator=g))})
        return out

    def _replayed(self, samples: Samples) -> Samples:
        """Check replayed records (type fitted, template in range); copies, without the mask attempts (re-counted)."""
        out = Samples()
        for i, s in enumerate(samples):
            if not isinstance(s, dict) or s.get("anomaly_type") not in self.types:
                raise ValueError(f"samples[{i}]['anomaly_type'] {s.get('anomaly_type') if isinstance(s, dict) else s!r} "
                                 f"was not fitted; known: {self.types}")
            tpl = s.get("template")
            if isinstance(tpl, bool) or not isinstance(tpl, int) or not 0 <= tpl < len(TEMPLATES):
                raise ValueError(f"samples[{i}]['template'] must be an int in [0, {len(TEMPLATES)}), got {tpl!r}")
            out.append({"anomaly_type": s["anomaly_type"], "template": tpl})
        return out

    @torch.no_grad()
    def generate_masks(self, types: Sequence[str], rngs: Sequence[torch.Generator], size: int) -> tuple[torch.Tensor, list[int]]:
        """Masks from the mask model: DDIM (η=1) with CFG against "", channel mean > threshold, border check."""
        from anoplug.diffusion.sampling import ClassifierFreeGuidance, sample

        p = self.params
        parts = self.parts
        emb = self._embedding(parts)
        ids = self._ids(parts, MASKTOK, p.mask_tokens)
        vec = torch.stack([self.vectors.mask[self.types.index(t)] for t in types])
        lat = parts.unet.config.sample_size if not p.resolution else p.resolution // parts.vae_factor
        shape = (len(types), parts.unet.config.in_channels, lat, lat)
        uncond = parts.encode_text([""] * len(types))
        out = torch.zeros(len(types), 1, size, size)
        attempts = [0] * len(types)
        todo = list(range(len(types)))
        for _ in range(p.mask_attempts):
            if not todo:
                break
            sub = [rngs[i] for i in todo]
            prompts = [TEMPLATES[int(torch.randint(0, len(TEMPLATES), (1,), generator=g))].format(self._mask_star()) for g in sub]
            with emb.injected(vec[todo], ids):
                cond = parts.encode_text(prompts)
            z = sample(_unet_call(parts), parts.scheduler, shape=(len(todo), *shape[1:]), rngs=sub, num_steps=p.mask_steps,
                       eta=p.mask_eta, cond=cond, device=parts.device,
                       hooks=[ClassifierFreeGuidance(uncond[todo], p.mask_guidance, batched=True)])
            img = F.interpolate(parts.decode(z), size=(size, size), mode="bilinear", align_corners=False)
            m = binarise_generated_mask(img, p.mask_threshold)
            ok = border_ok(m)
            for j, i in enumerate(todo):
                attempts[i] += 1
                out[i] = m[j]
            todo = [i for j, i in enumerate(todo) if not bool(ok[j])]
        for i in todo:  # no attempt passed: keep nothing rather than a mask the original would have rejected
            out[i] = 0
        return out, attempts

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Draw type + template (or replay them), the mask unless ``conditions.target_mask`` gives it, then denoise.

        Draw order per sample rng: type, template, [mask model: template + DDIM noise per attempt],
        image DDIM noise. A replay still runs :meth:`sample` first, so each rng reaches its
        noise where the original call did: the same seeds and records give the same bytes, and
        an edited record (another type or template) changes only what it names.
        """
        from anoplug.diffusion import sampling as S

        p = self.params
        drawn = self.sample(batch, rngs)  # advances every rng to where its noise starts, replay or not
        samples = drawn if samples is None else self._replayed(samples)
        parts = self.parts
        size = self._size(parts)
        h, w = batch.size
        n = len(batch)
        types = [s["anomaly_type"] for s in samples]
        target = batch.conditions.target_mask
        if target is None:
            if p.mask_fit_steps == 0:
                raise ConditionError(f"{self.name} needs conditions.target_mask: no mask model was trained "
                                     "(mask_fit_steps=0); set it with batch.with_conditions(target_mask=...)")
            work_mask, attempts = self.generate_masks(types, rngs, size)
            samples = Samples({**s, "mask_attempts": a} for s, a in zip(samples, attempts))
            out_mask = (F.interpolate(work_mask, size=(h, w), mode="bilinear", align_corners=False) > 0.5).float()
        else:
            out_mask = target  # validated by the batch: [B,1,H,W] float32 in {0,1}
            work_mask = (F.interpolate(out_mask, size=(size, size), mode="bilinear", align_corners=False) > 0.5).float()
        img = F.interpolate(batch.image, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        z0 = parts.encode_image(img)
        lat_mask = self._latent_mask(work_mask, z0.shape[-2:])
        emb = self._embedding(parts)
        ids = self._ids(parts, APPEAR, p.appearance_tokens) + self._ids(parts, SPATIAL, p.spatial_tokens)
        vec = torch.cat([self.appearance[[self.types.index(t) for t in types]], self.encoder(work_mask.to(self.device))], 1)
        prompts = [TEMPLATES[s["template"]].format(self._star()) for s in samples]
        token_ids = parts.tokenize(prompts)
        with emb.injected(vec, ids):
            cond = parts.encode_text(token_ids)
        cols = torch.isin(token_ids, torch.tensor(ids, device=token_ids.device))
        if p.arr_weight_bos:
            cols[:, 0] = True
        n_train = int(parts.scheduler.config.num_train_timesteps)

        def mask_at(i: int, t: int) -> torch.Tensor:
            """The latent mask; with ARR, dilated by a radius that shrinks with t."""
            if not p.adaptive_reweighting:
                return lat_mask
            return dilate(lat_mask, arr_radius(t, n_train, p.arr_radius, int(z0.shape[-1])))

        def arr(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return arr_weights(x, z0, mask_at(ctx.i, int(ctx.t)), p.arr_max_weight)

        # the `blend` parameter names one of the §2.1 variants; each is a hook of the one sampling loop
        blend = {"before": [S.BlendBefore(z0, mask_at)], "after": [S.BlendAfter(z0, mask_at)],
                 "pixel_x0": [S.PixelX0Blend(parts.decode, parts.encode_image, img, work_mask)],
                 "composite": [], "none": []}[p.blend]
        guidance = [S.ClassifierFreeGuidance(parts.encode_text([""] * n), p.guidance, batched=False)] if p.guidance > 1 else []
        # the anoplug processors are installed with ARR off too, so ARR on/off differ by the re-weighting alone
        arr_hook = S.ReweightCrossAttention(parts.unet, cols, arr, layers=lambda name: p.adaptive_reweighting)
        finish = ([S.FinalComposite(batch.image, out_mask)] if p.blend == "composite" else []) + (
            [S.ExactPaste(batch.image, out_mask)] if p.paste_background else [])

        def decode(z: torch.Tensor) -> torch.Tensor:
            """Latent → image in [0, 1] at the batch's size."""
            gen = parts.decode(z)
            if (h, w) == (size, size):
                return gen
            return F.interpolate(gen, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)

        out = S.sample(_unet_call(parts), parts.scheduler, shape=z0.shape, rngs=rngs, num_steps=p.steps, eta=p.eta, cond=cond,
                       device=z0.device, hooks=[*blend, *guidance, arr_hook, *finish], decode=decode)
        labels = [t if bool(out_mask[i].any()) else GOOD for i, t in enumerate(types)]
        result = Batch(image=out.float().contiguous(), mask=out_mask.clone(), label=labels, meta=[dict(m) for m in batch.meta],
                       object_mask=batch.object_mask, depth=batch.depth, text=batch.text)
        return result, samples
