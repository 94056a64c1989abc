"""SuperSimpleNet: synthetic anomalies made in feature space, and the small detector that learns from them.

Rolih, Fučka, Skočaj, "SuperSimpleNet: Unifying Unsupervised and Supervised Learning for Fast
and Reliable Surface Defect Detection", ICPR 2024 (MIT code: github.com/blaz-r/SuperSimpleNet).

Read top to bottom, as in the paper:

1. **Features.** A frozen backbone gives two mid-level layers (WRN-50-2 layer2 + layer3 in the
   paper); both are bilinearly upsampled to twice the first one's size (1/4 of the input),
   concatenated and averaged over 3×3 neighbourhoods.
2. **Adaptor.** A 1×1 convolution (C → C) makes the features trainable.
3. **Feature-level anomalies** (:meth:`SuperSimpleNet.generate_features`). The batch is
   duplicated; for every copy a Perlin noise map is drawn at the next power of two of the
   feature size, resized to it and thresholded (0.2 MVTec-like, 0.6 VisA-like and supervised);
   with probability ½ that mask is emptied. Gaussian noise N(0, 0.015²) is added to the adapted
   features inside the mask only. Real defect masks (supervised training) are OR-ed with the
   synthetic ones; without ``overlap`` no noise goes into a real defect.
4. **Heads.** Segmentation: 1×1 conv C→1024, BN, LeakyReLU(0.2), 1×1 conv → 1. Classification:
   5×5 conv on [features, map] → 128, BN, ReLU; global max and mean of it and of the map → linear.
5. **Loss.** Truncated L1 with margin 0.5 on the map + focal loss (γ = 4) on the map and on the
   image score. AdamW (adaptor 1e-4; heads 2e-4, wd 1e-5), step decay ×0.4 at 80 % and 90 %.
6. **Inference.** Map upsampled to the image and blurred (Gaussian σ = 4); image score =
   sigmoid of the classification head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from anoplug.backbones import Backbone, BackboneUser, backbone_info
from anoplug.generator import Paper, Requires
from anoplug.learned import LearnedFeatureGenerator
from anoplug.noise import perlin_noise, sample_gradients, sample_scales
from anoplug.ops import as_batch, predict_in_chunks
from anoplug.params import Params
from anoplug.seeding import resolve_seeds, rngs_for

__all__ = ["SuperSimpleNet", "SuperSimpleNetParams", "PRESETS", "sample_noise_regions", "add_masked_noise",
           "ssn_loss", "focal_loss"]

#: The official training configurations (train.py of the reference code), to pass as ``**PRESETS[...]``.
PRESETS: dict[str, dict[str, Any]] = {
    "mvtec": {"perlin_threshold": 0.2, "overlap": True, "stop_grad": True, "clip_grad": False},
    "visa": {"perlin_threshold": 0.6, "overlap": True, "stop_grad": True, "clip_grad": False},
    "supervised": {"perlin_threshold": 0.6, "overlap": False, "stop_grad": False, "clip_grad": True},
}

BackboneName = Literal["efficientnet-lite0", "wide_resnet50_2", "resnet18", "tiny-random"]


class SuperSimpleNetParams(Params):
    # -- the feature-level generator -------------------------------------------------------
    noise_std: float = Field(0.015, gt=0, le=1, description="σ of the Gaussian noise added inside the mask (paper 0.015)")
    perlin_threshold: float = Field(0.2, ge=-1, le=1,
                                    description="Perlin binarisation threshold: 0.2 MVTec-like, 0.6 VisA-like / supervised")
    empty_probability: float = Field(0.5, ge=0, le=1, description="probability that a copy's mask is emptied (paper ½)")
    perlin_min_exp: int = Field(0, ge=0, le=7, description="smallest Perlin scale exponent (scale 2**e per axis)")
    perlin_max_exp: int = Field(6, ge=1, le=8, description="Perlin scale exponent upper bound, exclusive (paper 6)")
    duplicate: bool = Field(True, description="duplicate the batch, every copy with its own mask (the paper's [x; x])")
    overlap: bool = Field(True, description="allow noise inside real defects (False in the supervised preset)")
    feature_norm: Literal["auto", "none", "standardize"] = Field(
        "auto", description="standardise backbone features per channel (train statistics) so σ keeps the paper's "
                            "meaning; auto: none for wide_resnet50_2, standardize otherwise")
    # -- the detector that consumes it ------------------------------------------------------
    backbone: BackboneName = Field("efficientnet-lite0",
                                   description="frozen backbone (paper: wide_resnet50_2; default: offline Lite0)")
    pretrained: bool = Field(True, description="use the backbone's ImageNet weights (False: random, for tests)")
    image_size: int = Field(256, ge=32, le=1024, multiple_of=32, description="side the images are resized to (paper 256)")
    seg_hidden: int = Field(1024, ge=4, le=4096, description="hidden channels of the segmentation head (paper 1024)")
    dec_hidden: int = Field(128, ge=4, le=1024, description="channels of the classification head's 5×5 conv (paper 128)")
    stop_grad: bool = Field(True, description="detach the map before the classification head (False when supervised)")
    clip_grad: bool = Field(False, description="clip the gradient norm to 1 (True when supervised)")
    lr_adaptor: float = Field(1e-4, gt=0, le=1, description="AdamW learning rate of the adaptor")
    lr_heads: float = Field(2e-4, gt=0, le=1, description="AdamW learning rate of both heads")
    weight_decay: float = Field(1e-5, ge=0, le=1, description="AdamW weight decay of both heads")
    batch_size: int = Field(32, ge=1, le=512, description="training images per step, before duplication (paper 32)")
    steps: int = Field(3000, ge=0, le=10_000_000, description="training steps (paper: 300 epochs)")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="seed of weight init, batch order and synthesis in fit")

    @field_validator("perlin_max_exp")
    @classmethod
    def _max_above_min(cls, v: int, info: Any) -> int:
        lo = info.data.get("perlin_min_exp", 0)
        if v <= lo:
            raise ValueError(f"must be greater than perlin_min_exp ({lo})")
        return v


# -- 3. feature-level anomalies ---------------------------------------------------------------
def _next_pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


def sample_noise_regions(rngs: Sequence[torch.Generator], size: tuple[int, int], threshold: float,
                         empty_probability: float = 0.5, min_exp: int = 0, max_exp: int = 6
                         ) -> tuple[torch.Tensor, list[dict]]:
    """One binary Perlin mask ``[1,h,w]`` per rng, drawn at the next power of two and resized.

    Returns the masks ``[n,1,h,w]`` and the draws of each (scales, emptied) for provenance.
    """
    h, w = size
    ph, pw = _next_pow2(h), _next_pow2(w)
    grads, draws = [], []
    for rng in rngs:
        scales = sample_scales(rng, min_exp, max_exp)
        grads.append(sample_gradients(rng, scales))
        emptied = bool(torch.rand((), generator=rng) < empty_probability)
        draws.append({"perlin_scales": scales, "emptied": emptied})
    noise = perlin_noise(grads, (ph, pw))[:, None]
    if (ph, pw) != (h, w):
        noise = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    regions = (noise > threshold).float()
    keep = torch.tensor([not d["emptied"] for d in draws], dtype=torch.float32).view(-1, 1, 1, 1)
    return regions * keep, draws


def add_masked_noise(features: torch.Tensor, regions: torch.Tensor, rngs: Sequence[torch.Generator],
                     std: float, *, inplace: bool = False) -> torch.Tensor:
    """``features + N(0, std²)`` at the positions where ``regions`` is 1, elsewhere a plain copy.

    Noise is drawn only for masked positions (the same distribution as drawing everywhere and
    multiplying by the mask, at a fraction of the cost); sample *i* draws from ``rngs[i]``.
    ``inplace=True`` writes into ``features`` (for a tensor the caller has just made).
    """
    out = features if inplace else features.clone()
    b, c = features.shape[:2]
    flat = out.view(b, c, -1)
    reg = regions.reshape(b, -1).to(features.device)
    for i, rng in enumerate(rngs):
        idx = reg[i].nonzero().squeeze(1)
        if idx.numel():
            noise = torch.randn(c, idx.numel(), generator=rng, device=rng.device, dtype=features.dtype).mul_(std)
            flat[i].index_add_(1, idx, noise.to(features.device))  # (alpha= is ~10× slower on CPU)
    return out


# -- 1.-2. features and adaptor; 4. heads -------------------------------------------------------
def ssn_features(backbone: Backbone, images: torch.Tensor, layers: Sequence[str] | None = None) -> torch.Tensor:
    """Backbone layers upsampled to 2× the first one, concatenated, 3×3 average (the paper's aggregation)."""
    feats = list(backbone(images, layers).values())
    h, w = feats[0].shape[-2:]
    up = [F.interpolate(f, size=(2 * h, 2 * w), mode="bilinear", align_corners=True) for f in feats]
    return F.avg_pool2d(torch.cat(up, 1), kernel_size=3, stride=1, padding=1)


class SegDecHead(nn.Module):
    """Segmentation head (per-position map) and classification head (image score) of the paper."""

    def __init__(self, channels: int, seg_hidden: int = 1024, dec_hidden: int = 128, stop_grad: bool = True) -> None:
        super().__init__()
        self.stop_grad = stop_grad
        self.seg = nn.Sequential(nn.Conv2d(channels, seg_hidden, 1), nn.BatchNorm2d(seg_hidden), nn.LeakyReLU(0.2),
                                 nn.Conv2d(seg_hidden, 1, 1, bias=False))
        self.dec = nn.Sequential(nn.Conv2d(channels + 1, dec_hidden, 5, padding=2), nn.BatchNorm2d(dec_hidden), nn.ReLU())
        self.fc = nn.Linear(2 * dec_hidden + 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.seg(x)
        m = amap.detach() if self.stop_grad else amap
        d = self.dec(torch.cat([x, m], 1))
        pooled = torch.cat([d.amax((2, 3)), d.mean((2, 3)), m.amax((2, 3)), m.mean((2, 3))], 1)
        return amap, self.fc(pooled).squeeze(1)


class FeatureStandardizer(nn.Module):
    """Per-channel ``(x − mean) / std`` with statistics of the training normals (identity until fitted).

    σ = 0.015 was tuned on WRN-50-2 features, whose channels have a spread of order one;
    other backbones differ (EfficientNet-Lite0's mid-level channels: ≈ 4), so they are
    standardised to give σ the same relative size.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean((0, 2, 3), keepdim=True))
        std = features.std((0, 2, 3), keepdim=True)
        self.std.copy_(std.clamp_min(0.01 * float(std.median()) + 1e-6))  # dead channels must not explode on test data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _xavier_init(module: nn.Module, g: torch.Generator) -> None:
    """Xavier-normal weights (as the reference), torch-default uniform biases, from one seeded generator."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                rf = m.weight[0, 0].numel()
                fan_in, fan_out = m.weight.shape[1] * rf, m.weight.shape[0] * rf
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / (fan_in + fan_out)))
                if m.bias is not None:
                    bound = 1 / math.sqrt(fan_in)
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * bound)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()


# -- 5. loss ---------------------------------------------------------------------------------
def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Binary focal loss on sigmoid probabilities (no α), computed from logits for stability."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean()


def ssn_loss(amap: torch.Tensor, score: torch.Tensor, mask: torch.Tensor, label: torch.Tensor,
             margin: float = 0.5) -> torch.Tensor:
    """Truncated L1 (normal positions pushed below −margin, anomalous above +margin) + two focal terms."""
    loss = focal_loss(amap, mask) + focal_loss(score, label)
    normal, anomalous = amap[mask == 0], amap[mask > 0]
    if normal.numel():
        loss = loss + torch.clamp(normal + margin, min=0).mean()
    if anomalous.numel():
        loss = loss + torch.clamp(margin - anomalous, min=0).mean()
    return loss


class TrainingData(NamedTuple):
    """What :meth:`SuperSimpleNet.build` prepares: images at ``image_size``, their cached backbone
    features (None when too big: computed per step), masks at feature resolution, labels."""

    images: torch.Tensor
    features: torch.Tensor | None
    masks: torch.Tensor
    labels: torch.Tensor


class SuperSimpleNet(BackboneUser, LearnedFeatureGenerator):
    """Feature-level generator of SuperSimpleNet plus its detector (adaptor, segmentation and classification heads).

    ``generate_features`` works on any ``[B,C,h,w]`` features (it needs no training);
    ``fit`` trains the detector on normal images (unsupervised) or on normal + real defective
    images with masks (supervised); ``predict`` and ``evaluate`` use it. ``fit`` is the template of
    :class:`anoplug.learned.LearnedFeatureGenerator` (checkpoints, resume, ``history``); this class
    supplies :meth:`build`, :meth:`optimizers`, :meth:`schedulers` and :meth:`training_step`.
    """

    name = "supersimplenet"
    title = "SuperSimpleNet: Gaussian feature noise inside Perlin masks"
    category = "speed"
    tags = ("feature",)
    paper = Paper("SuperSimpleNet: Unifying Unsupervised and Supervised Learning for Fast and Reliable Surface "
                  "Defect Detection", "ICPR", 2024, "https://arxiv.org/abs/2408.03143",
                  "https://github.com/blaz-r/SuperSimpleNet")
    Params = SuperSimpleNetParams
    requires = Requires(fit=False, weights="wide_resnet50_2 (ImageNet) in the paper; efficientnet-lite0 offline")
    version = "0.1.0"
    params: SuperSimpleNetParams

    blur_sigma: ClassVar[float] = 4.0

    def __init__(self, params: Params | dict | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        info = backbone_info(p.backbone)
        self.layers = info.default_layers
        self.channels = info.channels(self.layers)
        self.standardizer = FeatureStandardizer(self.channels)
        self.adaptor = nn.Conv2d(self.channels, self.channels, 1)
        self.head = SegDecHead(self.channels, p.seg_hidden, p.dec_hidden, p.stop_grad)
        g = torch.Generator().manual_seed(p.seed)
        _xavier_init(self.adaptor, g)
        _xavier_init(self.head, g)
        self.adaptor.eval()
        self.head.eval()
        self.history: list[dict] = []

    # -- backbone and features ------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"standardizer": self.standardizer, "adaptor": self.adaptor, "head": self.head}

    @property
    def standardizes(self) -> bool:
        mode = self.params.feature_norm
        return mode == "standardize" or (mode == "auto" and self.params.backbone != "wide_resnet50_2")

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features -> adapted features (the space the synthetic anomalies live in)."""
        return self.adaptor(self.standardizer(features))

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        s = self.params.image_size
        if images.shape[-2:] == (s, s):
            return images
        return F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Aggregated backbone features ``[B,C,s/4,s/4]`` of [0,1] images (before the adaptor)."""
        return ssn_features(self.backbone, self._resize(images.to(self.device)), self.layers)

    # -- the generator ---------------------------------------------------------------------
    def synthesize(self, features: torch.Tensor, rngs: Sequence[torch.Generator], gt_mask: torch.Tensor | None = None,
                   gt_label: torch.Tensor | None = None, *, duplicate: bool | None = None,
                   empty_probability: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict]]:
        """The paper's AnomalyGenerator: (features, mask, label, draws) of the (duplicated) batch.

        Copy *c* of sample *i* draws from ``rngs[i]`` (copy 0 first), so a sample's result
        never depends on the rest of its batch.
        """
        p = self.params
        b, _, h, w = features.shape
        if len(rngs) != b:
            raise ValueError(f"{len(rngs)} generators for {b} samples")
        if gt_mask is None:
            gt_mask = features.new_zeros(b, 1, h, w)
        elif gt_mask.shape != (b, 1, h, w):
            raise ValueError(f"gt_mask must be [B,1,h,w] = {(b, 1, h, w)} at feature resolution, got {tuple(gt_mask.shape)}")
        gt_mask = (gt_mask > 0).to(features.dtype)
        if gt_label is None:
            gt_label = gt_mask.flatten(1).amax(1)
        copies = 2 if (p.duplicate if duplicate is None else duplicate) else 1
        all_rngs = list(rngs) * copies
        masks, labels = (torch.cat([t] * copies) for t in (gt_mask, gt_label.to(features.dtype)))
        feats = torch.cat([features] * copies) if copies > 1 else features.clone()  # one copy of the features, no more
        regions, draws = sample_noise_regions(all_rngs, (h, w), p.perlin_threshold,
                                              p.empty_probability if empty_probability is None else empty_probability,
                                              p.perlin_min_exp, p.perlin_max_exp)
        regions = regions.to(features.device)
        if not p.overlap:
            regions = regions * (1 - masks)
        out = add_masked_noise(feats, regions, all_rngs, p.noise_std, inplace=True)
        mask = ((masks + regions) > 0).to(features.dtype)
        label = ((labels + mask.flatten(1).amax(1)) > 0).to(features.dtype)
        return out, mask, label, draws

    def generate_features(self, features: torch.Tensor, *, generator: torch.Generator | None = None,
                          seed: int | None = None, seeds: Sequence[int] | None = None,
                          gt_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturbed features and their mask at feature resolution.

        With ``duplicate`` (the default, as the paper) the result has ``2B`` rows: copy 0 of
        every sample, then copy 1, each with its own Perlin mask (half of them emptied).
        ``gt_mask`` (``[B,1,h,w]``, real defects) is OR-ed into the returned mask.
        """
        if not isinstance(features, torch.Tensor) or features.ndim != 4:
            raise ValueError(f"features must be a [B,C,h,w] tensor, got {getattr(features, 'shape', type(features))}")
        per_sample = resolve_seeds(len(features), generator=generator, seed=seed, seeds=seeds)
        out, mask, _, _ = self.synthesize(features, rngs_for(per_sample), gt_mask)
        return out, mask

    # -- training ----------------------------------------------------------------------------
    def _training_set(self, normals: Any, anomalies: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images resized to image_size, masks at feature resolution (bilinear + 0.5 as the reference), labels."""
        batches = [as_batch(normals, "normals")]
        if anomalies is not None:
            batches.append(as_batch(anomalies, "anomalies"))
        images = torch.cat([self._resize(b.image) for b in batches])
        side = self._feature_side()
        masks = torch.cat([F.interpolate(b.mask, size=(side, side), mode="bilinear", align_corners=False) for b in batches])
        masks = (masks >= 0.5).float()
        labels = torch.tensor([float(lab != "good") for b in batches for lab in b.label])
        return images, masks, torch.maximum(labels, masks.flatten(1).amax(1))

    def _feature_side(self) -> int:
        stride = backbone_info(self.params.backbone).layers[self.layers[0]][1]
        return 2 * (self.params.image_size // stride)

    # -- training (the fit template of anoplug.learned: build, optimizers, schedulers, training_step) --
    def build(self, normals: Any, anomalies: Any, generator: torch.Generator) -> TrainingData:
        """The training set, its frozen-backbone features (computed once when they fit in 1 GiB) and the
        standardiser's statistics. Unsupervised with ``normals`` only; supervised when ``anomalies``
        (a Batch with real defect masks) is given — real masks are OR-ed with the synthetic ones.

        Adaptor and heads keep the weights they have (xavier init from ``seed`` at construction, or
        an earlier fit); nothing here is random.
        """
        images, masks, labels = self._training_set(normals, anomalies)
        n = len(images)
        cached = None
        if n * self.channels * self._feature_side() ** 2 * 4 <= 1 << 30:  # frozen backbone: compute once
            cached = torch.cat([self.features(images[i:i + 16]) for i in range(0, n, 16)])
        if self.standardizes:
            stats_from = cached if cached is not None else torch.cat([self.features(images[i:i + 16])
                                                                     for i in range(0, min(n, 64), 16)])
            self.standardizer.fit(stats_from)
        return TrainingData(images, cached, masks.to(self.device), labels.to(self.device))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One AdamW, three groups as the reference: adaptor (lr_adaptor, AdamW's default decay),
        segmentation head and classification head (lr_heads, weight_decay)."""
        p = self.params
        groups = [{"params": self.adaptor.parameters(), "lr": p.lr_adaptor},
                  {"params": self.head.seg.parameters(), "lr": p.lr_heads, "weight_decay": p.weight_decay},
                  {"params": [*self.head.dec.parameters(), *self.head.fc.parameters()], "lr": p.lr_heads,
                   "weight_decay": p.weight_decay}]
        return {"adamw": torch.optim.AdamW(groups)}

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer], steps: int) -> dict[str, Any]:
        """Step decay ×0.4 at 80 % and 90 % of the steps."""
        milestones = [int(steps * 0.8), int(steps * 0.9)]
        return {"adamw": torch.optim.lr_scheduler.MultiStepLR(optimizers["adamw"], milestones=milestones, gamma=0.4)}

    @property
    def clip_grad_norm(self) -> float | None:
        """Global gradient norm clipped to 1 when ``clip_grad`` (the supervised preset)."""
        return 1.0 if self.params.clip_grad else None

    def training_step(self, data: TrainingData, step: int, generator: torch.Generator) -> dict[str, Any]:
        """A batch drawn without replacement, its synthetic anomalies (per-sample seeds from
        ``generator``), both heads, the loss. Logs the loss, the anomalous fraction of the mask and
        ``map_gap`` (mean map inside − outside the mask; only on steps whose mask is not empty)."""
        p = self.params
        idx = torch.randperm(len(data.images), generator=generator)[:p.batch_size]
        feats = data.features[idx] if data.features is not None else self.features(data.images[idx])
        rngs = rngs_for(resolve_seeds(len(idx), generator=generator))
        synth, mask, label, _ = self.synthesize(self.adapt(feats), rngs, data.masks[idx], data.labels[idx])
        amap, score = self.head(synth)
        loss = ssn_loss(amap, score, mask, label)
        info: dict[str, Any] = {"loss": loss, "anomalous_fraction": float(mask.mean())}
        with torch.no_grad():
            if bool(mask.any()):
                info["map_gap"] = float(amap[mask > 0].mean() - amap[mask == 0].mean())
        return info

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Any, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps ``[B,1,H,W]`` at the input size, image scores ``[B]`` in (0,1))."""
        def patches(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            amap, score = self.head(self.adapt(self.features(part)))
            return amap, torch.sigmoid(score)

        return predict_in_chunks(images, patches, chunk, self.blur_sigma)

    def evaluate(self, test: Any) -> dict[str, float]:
        """Image AUROC/AP (classification head, and max of the map), pixel AUROC/AP, AU-PRO on a labelled test set."""
        from anoplug.metrics import detector_report

        batch = as_batch(test, "test")
        return detector_report(*self.predict(batch), batch)
