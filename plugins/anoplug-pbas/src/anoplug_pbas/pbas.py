"""PBAS: synthetic anomalies made by pushing normal features outward, past a boundary that shrinks.

Chen, Luo, Gao, Lv, Zhang, "Progressive Boundary Guided Anomaly Synthesis for Industrial
Anomaly Detection", IEEE TCSVT 35(2), 2025 (MIT code: github.com/cqylunlun/PBAS).

Read top to bottom, as in the paper:

1. **Patch features.** A frozen backbone gives two mid-level layers (WRN-50-2 layer2 + layer3
   in the paper). Each is unfolded into 3×3 neighbourhoods; the deeper layer's patch grid is
   bilinearly resized to the first one's; each layer's patch vector is average-pooled to 1536
   values, and the two are averaged (pooled) to one 1536-d feature per position.
2. **Projection.** One trainable linear layer (Adam, lr 1e-4, wd 1e-5).
3. **Centres, fixed before training** (the approximate boundary's anchors). With the untrained
   projection: the per-position mean over the first batch gives one centre per position;
   every later batch's per-position mean is matched to its most cosine-similar centre, which
   is updated by EMA ``c ← 0.9·c + 0.1·row``. They never change again.
4. **Anomaly synthesis** (:meth:`PBAS.generate_features`). For each projected feature ``f``:
   nearest centre ``c*`` by cosine similarity, ``d = f − c*``, the batch-mean radius
   ``r̄ = mean‖d‖``, and the twin ``f + d/‖d‖ · r̄ · 0.25`` (the offset is detached). Nothing is
   random: the push is decided by the batch.
5. **Loss.** ``r̄`` (pulls features to their centres, so the boundary — and with it the
   synthetic anomalies — moves inward as training progresses) + BCE(D(f), 0) + BCE(D(twin), 1);
   the discriminator D is Linear → BN → LeakyReLU(0.2) → Linear → sigmoid (AdamW, lr 2e-4).
6. **Inference.** Patch score = D(projected feature); map bilinearly upsampled to the image
   and blurred (Gaussian σ = 4); image score = max over patches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from anoplug.backbones import BackboneUser, backbone_info
from anoplug.generator import Paper, Requires
from anoplug.learned import LearnedFeatureGenerator
from anoplug.ops import as_batch, predict_in_chunks
from anoplug.params import Params
from anoplug.seeding import resolve_seeds

__all__ = ["PBAS", "PBASParams", "patch_features", "build_centres", "update_centres", "nearest_centres",
           "synthesize_twins", "Discriminator"]

BackboneName = Literal["efficientnet-lite0", "wide_resnet50_2", "resnet18", "tiny-random"]


class PBASParams(Params):
    # -- the synthesis --------------------------------------------------------------------------
    k: float = Field(0.25, gt=0, le=4, description="outward push as a fraction of the batch-mean radius (paper 0.25)")
    centre_momentum: float = Field(0.9, ge=0, lt=1, description="EMA keep factor when building the centres (paper 0.9)")
    # -- the detector that consumes it ----------------------------------------------------------
    backbone: BackboneName = Field("efficientnet-lite0",
                                   description="frozen backbone (paper: wide_resnet50_2; default: offline Lite0)")
    pretrained: bool = Field(True, description="use the backbone's ImageNet weights (False: random, for tests)")
    image_size: int = Field(288, ge=32, le=1024, multiple_of=16, description="side the images are resized to (paper 288)")
    patch_size: int = Field(3, ge=1, le=9, description="neighbourhood aggregated into one patch feature (paper 3)")
    pretrain_dim: int = Field(1536, ge=4, le=8192, description="each layer's patch vector is pooled to this size (paper 1536)")
    target_dim: int = Field(1536, ge=4, le=8192, description="dimension of the final patch feature (paper 1536)")
    dsc_hidden: int = Field(1024, ge=4, le=8192, description="hidden width of the discriminator (paper 1024)")
    lr: float = Field(1e-4, gt=0, le=1, description="Adam learning rate of the projection; the discriminator uses 2×")
    batch_size: int = Field(8, ge=1, le=512, description="training images per step (paper 8)")
    epochs: int = Field(640, ge=1, le=100_000, description="training epochs (paper 640): steps = epochs · ⌈n / batch_size⌉ "
                        "(5 k–31 k steps on MVTec AD's 60–391 training images per class)")
    steps: int = Field(0, ge=0, le=10_000_000, description="training steps; 0 = follow epochs (fit(steps=...) overrides both)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of weight init and batch order in fit")

    @field_validator("patch_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (the patch is centred on its position)")
        return v


# -- 1. patch features -----------------------------------------------------------------------
def patch_features(layers: Sequence[torch.Tensor], patch_size: int = 3, pretrain_dim: int = 1536,
                   target_dim: int = 1536) -> tuple[torch.Tensor, tuple[int, int]]:
    """Locally aggregated features ``[B, h·w, target_dim]`` on the first layer's grid ``(h, w)``."""
    pad = (patch_size - 1) // 2
    h, w = layers[0].shape[-2:]
    pooled = []
    for feat in layers:
        b, c = feat.shape[:2]
        patches = F.unfold(feat, kernel_size=patch_size, padding=pad, stride=1)  # [B, C·p², h_l·w_l]
        patches = patches.view(b, c * patch_size**2, *feat.shape[-2:])
        if patches.shape[-2:] != (h, w):
            patches = F.interpolate(patches, size=(h, w), mode="bilinear", align_corners=False)
        vec = patches.flatten(2).transpose(1, 2).reshape(b * h * w, 1, -1)  # channel-major, as unfold orders it
        pooled.append(F.adaptive_avg_pool1d(vec, pretrain_dim))
    stacked = torch.cat(pooled, 1).reshape(-1, 1, len(layers) * pretrain_dim)
    out = F.adaptive_avg_pool1d(stacked, target_dim).reshape(layers[0].shape[0], h * w, target_dim)
    return out, (h, w)


# -- 2. and 5. the trainable parts --------------------------------------------------------------
class Discriminator(nn.Module):
    """Linear → BatchNorm → LeakyReLU(0.2) → Linear (no bias) → sigmoid: P(feature is synthetic)."""

    def __init__(self, dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2))
        self.tail = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.tail(self.body(x)))


def _xavier_init(module: nn.Module, g: torch.Generator) -> None:
    """Xavier-normal linear weights (as the reference), torch-default uniform biases, from one seeded generator."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / (fan_in + fan_out)))
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) / math.sqrt(fan_in))


# -- 3. centres ---------------------------------------------------------------------------------
def nearest_centres(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar centre for every row of ``features`` ``[N, D]``."""
    return (F.normalize(features, dim=1) @ F.normalize(centres, dim=1).T).argmax(1)


def update_centres(centres: torch.Tensor, rows: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """One batch of the reference's sequential EMA, vectorised and exact.

    All rows are matched first; then, in row order, ``c[j] ← m·c[j] + (1−m)·row``. A centre hit
    by rows r₁ < … < r_k thus ends at ``mᵏ·c + Σᵢ (1−m)·m^(k−i)·rᵢ``.
    """
    idx = nearest_centres(rows, centres)
    counts = torch.bincount(idx, minlength=len(centres))
    order = torch.argsort(idx, stable=True)
    sorted_idx = idx[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(idx), device=idx.device) - starts[sorted_idx] + 1  # 1..k within each centre
    weight = (1 - momentum) * momentum ** (counts[sorted_idx] - rank).to(rows.dtype)
    out = centres * (momentum ** counts.to(rows.dtype))[:, None]
    return out.index_add(0, sorted_idx, rows[order] * weight[:, None])


def build_centres(batches: Sequence[torch.Tensor], momentum: float = 0.9) -> torch.Tensor:
    """Centres ``[h·w, D]`` from per-image projected features ``[B, h·w, D]``, batch after batch."""
    centres = None
    for feats in batches:
        mean = feats.mean(0)
        centres = mean.clone() if centres is None else update_centres(centres, mean, momentum)
    if centres is None:
        raise ValueError("no batches to build centres from")
    return centres


# -- 4. synthesis ---------------------------------------------------------------------------------
def synthesize_twins(features: torch.Tensor, centres: torch.Tensor, k: float = 0.25
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anomalous twins, batch-mean radius r̄ (with grad), nearest-centre index) for features ``[N, D]``."""
    idx = nearest_centres(features, centres)
    direction = features - centres[idx]
    dist = direction.norm(dim=1, keepdim=True)
    radius = dist.mean()
    twins = features + (direction / dist.clamp_min(1e-12) * radius * k).detach()
    return twins, radius, idx


class PBAS(BackboneUser, LearnedFeatureGenerator):
    """PBAS's boundary-guided feature synthesis plus its detector (projection, centres, discriminator).

    ``generate_features`` turns projected patch features ``[B,D,h,w]`` into their anomalous
    twins (no mask: every position gets a twin); ``fit`` builds the centres and trains
    projection and discriminator on normal images; ``predict`` and ``evaluate`` use them.
    ``fit`` is the template of :class:`anoplug.learned.LearnedFeatureGenerator` (checkpoints,
    resume, ``history``); this class supplies :meth:`build`, :meth:`optimizers` and
    :meth:`training_step`.
    """

    name = "pbas"
    title = "PBAS: progressive boundary-guided feature-level anomaly synthesis"
    category = "feature"
    tags = ()
    paper = Paper("Progressive Boundary Guided Anomaly Synthesis for Industrial Anomaly Detection",
                  "IEEE TCSVT", 2025, "https://arxiv.org/abs/2412.17458", "https://github.com/cqylunlun/PBAS")
    Params = PBASParams
    requires = Requires(fit=False, weights="wide_resnet50_2 (ImageNet) in the paper; efficientnet-lite0 offline")
    version = "0.1.0"
    params: PBASParams

    def __init__(self, params: Params | dict | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.layers = backbone_info(p.backbone).default_layers
        self.projection = nn.Linear(p.target_dim, p.target_dim)
        self.discriminator = Discriminator(p.target_dim, p.dsc_hidden)
        g = torch.Generator().manual_seed(p.seed)
        _xavier_init(self.projection, g)
        _xavier_init(self.discriminator, g)
        self.discriminator.eval()
        self.centres: torch.Tensor | None = None
        self.history: list[dict] = []

    # -- backbone and features --------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"projection": self.projection, "discriminator": self.discriminator}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {} if self.centres is None else {"centres": self.centres}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        unknown = set(tensors) - {"centres"}
        if unknown:
            raise ValueError(f"{self.name}: unexpected extra tensors {sorted(unknown)}")
        centres = tensors.get("centres")  # no optimiser holds the centres: assigning is enough on resume
        self.centres = None if centres is None else centres.to(self.device)

    def to(self, device: str | torch.device) -> PBAS:
        super().to(device)  # moves the modules and the backbone
        if self.centres is not None:
            self.centres = self.centres.to(self.device)
        return self

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        s = self.params.image_size
        if images.shape[-2:] == (s, s):
            return images
        return F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features ``[B, h·w, D]`` (before the projection) of [0,1] images, and the grid ``(h, w)``."""
        p = self.params
        layers = list(self.backbone(self._resize(images.to(self.device)), self.layers).values())
        return patch_features(layers, p.patch_size, p.pretrain_dim, p.target_dim)

    # -- the generator ------------------------------------------------------------------------
    def generate_features(self, features: torch.Tensor, *, generator: torch.Generator | None = None,
                          seed: int | None = None, seeds: Sequence[int] | None = None) -> tuple[torch.Tensor, None]:
        """Anomalous twins ``[B,D,h,w]`` of projected features ``[B,D,h,w]``; no mask (every position).

        PBAS draws nothing at random: the seed arguments are accepted for the common API and
        ignored. Without fitted centres, the centres are those the method would build from
        this batch alone (its per-position mean). The push uses the batch-mean radius, so a
        sample's twin depends on its batch — as in the paper.
        """
        resolve_seeds(len(features), generator=generator, seed=seed, seeds=seeds)  # validates the arguments only
        if not isinstance(features, torch.Tensor) or features.ndim != 4:
            raise ValueError(f"features must be a [B,D,h,w] tensor, got {getattr(features, 'shape', type(features))}")
        b, d, h, w = features.shape
        rows = features.detach().permute(0, 2, 3, 1).reshape(b, h * w, d)
        centres = self.centres if self.centres is not None else build_centres([rows], self.params.centre_momentum)
        if centres.shape[1] != d:
            raise ValueError(f"features have {d} channels but the centres have {centres.shape[1]}")
        twins, _, _ = synthesize_twins(rows.reshape(-1, d), centres.to(features.device), self.params.k)
        return twins.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous(), None

    # -- training (the fit template of anoplug.learned: build, optimizers, training_step) ----------
    def build(self, normals: Any, anomalies: Any, generator: torch.Generator) -> torch.Tensor:
        """Patch features of the normals (frozen backbone: computed once), and the centres, built with
        the projection as it is now (untrained) over one pass in an order drawn from ``generator``.

        Projection and discriminator keep the weights they have (xavier init from ``seed`` at
        construction, or an earlier fit). Returns the features ``[n, h·w, D]``.
        """
        if anomalies is not None:
            raise ValueError("PBAS is unsupervised: fit(normals) takes no anomalies")
        p = self.params
        images = self._resize(as_batch(normals, "normals").image)
        n = len(images)
        feats = torch.cat([self.features(images[i:i + 16])[0] for i in range(0, n, 16)])
        with torch.no_grad():
            order = torch.randperm(n, generator=generator)
            self.centres = build_centres([self.projection(feats[order[i:i + p.batch_size]])
                                          for i in range(0, n, p.batch_size)], p.centre_momentum)
        return feats

    def planned_steps(self, steps: int | None, data: torch.Tensor) -> int:
        """``fit(steps=)``, else the ``steps`` parameter, else the paper's epochs over this training set."""
        if steps is not None:
            return int(steps)
        if self.params.steps:
            return int(self.params.steps)
        return self.params.epochs * math.ceil(len(data) / self.params.batch_size)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam for the projection (lr, wd 1e-5) and AdamW for the discriminator (2·lr), as the reference."""
        lr = self.params.lr
        return {"projection": torch.optim.Adam(self.projection.parameters(), lr=lr, weight_decay=1e-5),
                "discriminator": torch.optim.AdamW(self.discriminator.parameters(), lr=2 * lr)}

    def training_step(self, data: torch.Tensor, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch drawn without replacement; loss = mean radius to the centres + BCE(normal, 0) + BCE(twin, 1)."""
        p = self.params
        idx = torch.randperm(len(data), generator=generator)[:p.batch_size]
        true = self.projection(data[idx].reshape(-1, p.target_dim))
        fake, radius, _ = synthesize_twins(true, self.centres, p.k)
        scores = self.discriminator(torch.cat([true, fake]))
        bce = F.binary_cross_entropy(scores[:len(true)], torch.zeros_like(scores[:len(true)])) + \
            F.binary_cross_entropy(scores[len(true):], torch.ones_like(scores[len(true):]))
        return {"loss": radius + bce, "radius": radius, "bce": bce}

    # -- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Discriminator scores on the patch grid, ``[B,1,h,w]``."""
        feats, (h, w) = self.features(images)
        scores = self.discriminator(self.projection(feats.reshape(-1, feats.shape[-1])))
        return scores.reshape(len(images), 1, h, w)

    @torch.no_grad()
    def predict(self, images: Any, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps ``[B,1,H,W]`` at the input size, image scores ``[B]`` = max patch score)."""
        def patches(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = self.patch_scores(part)
            return s, s.flatten(1).amax(1)

        return predict_in_chunks(images, patches, chunk)

    def evaluate(self, test: Any) -> dict[str, float]:
        """Image AUROC/AP (max patch score, and max of the filtered map), pixel AUROC/AP, AU-PRO."""
        from anoplug.metrics import detector_report

        batch = as_batch(test, "test")
        return detector_report(*self.predict(batch), batch)
