"""AnomalyHybrid (Ying Zhao, CVPR 2025 SyntaGen workshop, arXiv 2504.04340): reference appearance on target structure.

No code is public; this is *reconstructed from the paper's description* (and its
predecessor AnomalyFactory, arXiv 2408.09533). Read top to bottom; the code sections carry
the same numbers. What is *paper* and what is *our assumption* is said at each step and in
the README's table.

1. **Structure maps** (:mod:`~anoplug_anomalyhybrid.structure`). Depth (the dataset's own,
   a local Depth-Anything-V2, or a shading proxy for RGB-only data) and edges (Sobel /
   Canny as PiDiNet's classical stand-in), depth normalised per image.
2. **Generator** (:mod:`~anoplug_anomalyhybrid.networks`). One encoder over
   ``cat(C_in, depth, edge)``; two decoders, AHD conditioned on depth and AHE on edges,
   each predicting an anomaly source ``A_gen`` and a fusion map ``M_gen``;
   ``A_out = C_in·(1 − M_gen) + A_gen·M_gen``.
3. **Unsupervised views** (:mod:`~anoplug_anomalyhybrid.views`). Content, depth and edge
   views of one image under different augmentations (local TPS, resize–translate–pad,
   flips); each decoder's target is the RGB under *its* condition's augmentation.
4. **Losses.** VGG perceptual loss between ``A_out`` and that target plus a conditional GAN
   loss from one discriminator that sees the output with the condition it followed, on the
   toolkit's :class:`anoplug.train.GANStep` (D update, then G update, each step).
5. **Inference.** *Local*: ``C_in`` is the image itself and the target's depth (AHD: a dent
   or protrusion, drawn or over ``conditions.target_mask``) or edge map (AHE: a crack-like
   stroke) is edited first; a depth map already edited by the user can be put on
   ``batch.depth`` with ``edit="none"`` (and ``target_mask`` = where it was edited).
   *Global* (``anomalyhybrid-global``): ``C_in`` is a reference image
   (``conditions.source_image``) on the unmodified target depth and edges.
6. **Mask.** ``(fusion > mask_threshold) ∧ (visible change > mask_tol)``; outside it the
   output is the input, bit for bit. The fusion map is ``M_gen`` (``fusion="model"``, global
   mode always) or, by default in local mode, ``max(M_gen, edit profile)`` (``"union"``): the
   paper does not say whether local masks come from ``M_gen`` or from the manipulated region,
   and after our short CPU training ``M_gen`` alone rarely rises on an edit (README).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from anoplug.conditions import ConditionError
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.train import GANBatch, GANStep, StepContext
from anoplug.types import GOOD, Batch
from anoplug_anomalyhybrid import structure as S
from anoplug_anomalyhybrid.networks import ConditionalPatchD, HybridGenerator, compose
from anoplug_anomalyhybrid.views import ViewParams, apply_view, draw_affine, draw_view

__all__ = ["AnomalyHybrid", "AnomalyHybridGlobal", "AnomalyHybridParams", "AnomalyHybridGlobalParams", "HybridStep",
           "PRESETS", "VGG_LAYERS"]

#: architecture per preset. "paper": the paper's MVTec scale (256 px) with widths of our choosing
#: (the paper gives none); "cpu": the same code scaled down for the shipped toy checkpoint.
PRESETS: dict[str, dict[str, int]] = {
    "paper": {"resolution": 256, "width": 64, "n_down": 4, "spade_hidden": 64, "d_width": 64, "d_layers": 3},
    "cpu": {"resolution": 64, "width": 16, "n_down": 3, "spade_hidden": 16, "d_width": 16, "d_layers": 3},
}

#: VGG16 layers of the perceptual loss (pix2pixHD-style multi-layer L1; *our assumption*: the
#: paper names "VGG perceptual loss" only; relu3_3 and deeper are left out to keep CPU training cheap)
VGG_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2")


class AnomalyHybridParams(Params):
    # -- architecture (0 = the preset's value) ----------------------------------------------------------
    preset: Literal["paper", "cpu"] = Field("cpu", description="'paper': 256 px, width 64, 4 scales; "
                                            "'cpu': 64 px, width 16, 3 scales (same code)")
    resolution: int = Field(0, ge=0, le=1024, description="working side in px (0 = preset)")
    width: int = Field(0, ge=0, le=256, description="base channel width of encoder and decoders (0 = preset)")
    n_down: int = Field(0, ge=0, le=6, description="down-sampling scales of the encoder (0 = preset)")
    spade_hidden: int = Field(0, ge=0, le=256, description="hidden channels of each condition modulation (0 = preset)")
    d_width: int = Field(0, ge=0, le=256, description="discriminator base width (0 = preset)")
    d_layers: int = Field(0, ge=0, le=6, description="stride-2 layers of the PatchGAN discriminator (0 = preset)")
    # -- training --------------------------------------------------------------------------------------
    fit_steps: int = Field(1500, ge=1, le=1_000_000, description="training steps (one D and one G update each)")
    batch_size: int = Field(8, ge=1, le=256, description="images per step (each gives a depth and an edge pair)")
    lr: float = Field(2e-4, gt=0, le=1.0, description="Adam learning rate of G and D (pix2pix default)")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 (pix2pix default 0.5)")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2")
    gan_loss: Literal["lsgan", "hinge", "nonsaturating"] = Field(
        "lsgan", description="adversarial loss of the conditional GAN (pix2pixHD's LSGAN by default)")
    w_vgg: float = Field(10.0, ge=0, le=1000, description="weight of the VGG perceptual loss (pix2pixHD: 10)")
    w_fusion: float = Field(0.0, ge=0, le=100, description="weight of mean(M_gen), a sparsity prior on the fusion "
                            "map (our addition, not in the paper's losses: 0 = the paper)")
    vgg_crop: int = Field(0, ge=0, le=1024, description="VGG loss on one random square crop of this side per step "
                          "(0 = the whole image; a CPU saving)")
    tps_points: int = Field(1, ge=0, le=9, description="TPS anchors moved per warped view (local warps)")
    tps_strength: float = Field(0.15, ge=0, le=0.5, description="largest anchor displacement, fraction of the half-side")
    geo_prob: float = Field(0.1, ge=0, le=1, description="probability that the content view gets its own "
                            "flip/resize-translate-pad (a globally misaligned pair)")
    cond_tps_prob: float = Field(0.5, ge=0, le=1, description="probability that a condition view gets its own TPS warp")
    scale_min: float = Field(0.8, gt=0.3, le=1, description="smallest resize factor of resize-translate-pad")
    # -- structure maps ------------------------------------------------------------------------------
    depth_source: Literal["auto", "batch", "proxy", "estimator"] = Field(
        "auto", description="'batch': batch.depth (refuse RGB-only data); 'estimator': Depth-Anything-V2 from "
        "depth_model; 'proxy': shading proxy; 'auto': batch.depth if present, else the proxy")
    depth_model: str = Field("", description="local directory of a transformers Depth-Anything-V2 checkpoint")
    edge_source: Literal["sobel", "canny"] = Field("sobel", description="classical edge map standing in for PiDiNet "
                                                   "(a user edge_estimator callable overrides it)")
    # -- generation ----------------------------------------------------------------------------------
    decoder: Literal["depth", "edge", "random"] = Field("depth", description="AHD (depth edit), AHE (edge edit) "
                                                       "or either at random per sample")
    edit: Literal["dent", "protrusion", "random", "none"] = Field(
        "random", description="depth edit of AHD; 'none' = batch.depth is already the edited target depth")
    edit_strength: float = Field(0.8, ge=0, le=3, description="peak depth change, fraction of the 2-98 % depth range")
    edit_jitter: float = Field(0.3, ge=0, lt=1, description="amplitude drawn in [(1 - jitter), 1] x edit_strength")
    region_min: float = Field(0.12, gt=0, le=0.5, description="smallest drawn radius, fraction of the side")
    region_max: float = Field(0.25, gt=0, le=0.5, description="largest drawn radius, fraction of the side")
    crack_width: float = Field(1.5, gt=0, le=8, description="width in working px of the AHE edge stroke")
    fusion: Literal["union", "model"] = Field(
        "union", description="local mode: fusion map max(M_gen, edit profile) ('union') or M_gen alone ('model')")
    mask_threshold: float = Field(0.25, gt=0, lt=1, description="mask = fusion map > this ...")
    mask_tol: float = Field(4 / 255, ge=0, lt=1, description="... and some channel changed by more than this")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the initial weights and of fit's draws")

    @model_validator(mode="after")
    def _check(self) -> AnomalyHybridParams:
        a = self.arch()
        if a["resolution"] < 16 or a["resolution"] % (2 ** a["n_down"]):
            raise ValueError(f"resolution {a['resolution']} must be >= 16 and divisible by 2**n_down = {2 ** a['n_down']}")
        if self.region_min > self.region_max:
            raise ValueError(f"region_min {self.region_min} > region_max {self.region_max}")
        return self

    def arch(self) -> dict[str, int]:
        """The architecture in use: the preset's value where the field is 0."""
        return {k: int(getattr(self, k)) or v for k, v in PRESETS[self.preset].items()}

    def views(self) -> ViewParams:
        return ViewParams(self.tps_points, self.tps_strength, self.geo_prob, self.scale_min, self.cond_tps_prob)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Initial weights from ``seed`` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


# -- 4. the losses on the GAN step ---------------------------------------------------------------------------------
class HybridStep(GANStep):
    """One step: D on (real, condition) pairs of both decoders, then G with ``w_vgg``·VGG + adversarial.

    ``batch.real`` holds the two targets ``cat(RGB under depth view, RGB under edge view)`` and
    ``batch.d_cond`` the matching conditions, so fakes ``cat(AHD out, AHE out)`` line up with them.
    """

    def __init__(self, G: HybridGenerator, D: ConditionalPatchD, sample: Callable[[StepContext], GANBatch], *,
                 loss: str, w_vgg: float, vgg: nn.Module | None, crop: int = 0, w_fusion: float = 0.0) -> None:
        super().__init__(G, D, sample, loss=loss, n_critic=1)  # type: ignore[arg-type]
        self.w_vgg, self.vgg, self.crop, self.w_fusion = float(w_vgg), vgg, int(crop), float(w_fusion)

    def generate(self, batch: GANBatch) -> dict[str, torch.Tensor]:
        out = self.G(*batch.g_input)
        return {**out, "fake": torch.cat([out["depth"], out["edge"]])}

    def d_terms(self, ctx: StepContext, batch: GANBatch, fake: Any, d_index: int) -> dict[str, torch.Tensor]:
        return super().d_terms(ctx, batch, fake["fake"], d_index)

    def g_terms(self, ctx: StepContext, batch: GANBatch, fake: Any) -> dict[str, torch.Tensor]:
        from anoplug.zoo.vgg import perceptual_loss

        terms = {"adv": self.g_loss_fn(self.discriminate(fake["fake"], batch))}
        if self.w_vgg > 0 and self.vgg is not None:
            x, y = fake["fake"], batch.real
            corner = batch.extra.get("crop")
            if corner is not None:  # the same window of output and target (drawn in the batch, from ctx.generator)
                (top, left), c = corner, self.crop
                x, y = x[..., top: top + c, left: left + c], y[..., top: top + c, left: left + c]
            terms["vgg"] = self.w_vgg * perceptual_loss(self.vgg, x, y, VGG_LAYERS, kind="l1")
        if self.w_fusion > 0:  # our addition: keep C_in wherever it already matches the target
            terms["fusion"] = self.w_fusion * 0.5 * (fake["depth_fusion"].mean() + fake["edge_fusion"].mean())
        return terms


class AnomalyHybrid(LearnedGenerator):
    """Local anomalies: the image's own content on its edited depth (AHD) or edge map (AHE).

    ``fit(normals)`` needs normal images only (their ``depth`` if they have one). Conditions:
    ``target_mask`` (where the depth/edge edit goes; otherwise an ellipse is drawn).
    """

    name = "anomalyhybrid"
    title = "AnomalyHybrid: reference appearance on target depth and edges (two decoders)"
    category = "multimodal-image-depth"
    tags: ClassVar[tuple[str, ...]] = ("gan", "mask")
    paper = Paper("AnomalyHybrid: A Domain-agnostic Generative Framework for General Anomaly Detection",
                  "CVPR 2025 Workshop (SyntaGen)", 2025, "https://arxiv.org/abs/2504.04340", "")
    Params = AnomalyHybridParams
    generation_params = ("decoder", "edit", "edit_strength", "edit_jitter", "region_min", "region_max",
                         "crack_width", "fusion", "mask_threshold", "mask_tol", "depth_source", "depth_model",
                         "edge_source")
    requires = Requires(fit=True, accepts=("target_mask",), accepts_depth=True)  # batch.depth with depth_source batch|auto
    preserves_outside_mask = True
    manual_optimization: ClassVar[bool] = True
    pretrained: ClassVar[dict[str, str]] = {"surface3d": "weights/surface3d"}

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        a = self.params.arch()
        with _seeded(self.params.seed):
            self.G = HybridGenerator(a["width"], a["n_down"], a["spade_hidden"])
            self.D = ConditionalPatchD(a["d_width"], a["d_layers"])
        self.G.eval()
        self.D.eval()
        self.history: list[dict] = []
        self.gan: HybridStep | None = None
        #: PiDiNet's place: a callable ``images [B,3,H,W] in [0,1] -> edges [B,1,H,W] in [0,1]`` (overrides edge_source)
        self.edge_estimator: S.EdgeFn | None = None
        self._depth_net: S.DepthAnything | None = None

    @property
    def resolution(self) -> int:
        return self.params.arch()["resolution"]

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    # -- 1. structure maps ----------------------------------------------------------------------------------------
    def depth_of(self, batch: Batch) -> torch.Tensor:
        """The raw depth ``[B,1,H,W]`` (larger = farther) of ``batch`` by ``depth_source``."""
        src = self.params.depth_source
        if src == "estimator" or (src == "auto" and batch.depth is None and self.params.depth_model):
            if not self.params.depth_model:
                raise ValueError(f"{self.name}: depth_source='estimator' needs depth_model = a local "
                                 "Depth-Anything-V2 directory")
            if self._depth_net is None:
                self._depth_net = S.DepthAnything(self.params.depth_model, self.device)
            return self._depth_net(batch.image.to(self.device))
        if src in ("batch", "auto") and batch.depth is not None:
            return batch.depth.to(self.device).float()
        if src == "batch":
            raise ConditionError(f"{self.name}: depth_source='batch' but the batch has no depth (RGB-only data): use a "
                                 "dataset with depth (toy:surface3d, mvtec-3d:...), set batch.depth, or "
                                 "depth_source='estimator' (depth_model=DIR) / 'proxy'")
        return S.shading_proxy(batch.image.to(self.device))

    def edges_of(self, images: torch.Tensor) -> torch.Tensor:
        """The edge map ``[B,1,h,w]`` in [0, 1] of working-size images."""
        if self.edge_estimator is not None:
            return self.edge_estimator(images).clamp(0, 1).to(images.dtype)
        return S.canny_edges(images) if self.params.edge_source == "canny" else S.sobel_edges(images)

    def structure(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image, normalised depth, edges)`` at the working size."""
        r = self.resolution
        image = _resize(batch.image.to(self.device), (r, r)).clamp(0, 1)
        depth = S.normalise_depth(_resize(self.depth_of(batch), (r, r)))
        return image, depth, self.edges_of(image)

    # -- 3. training data: the augmented views --------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Structure maps of the normals at the working size; the VGG16 of the perceptual loss; the GAN step."""
        if normals is None or len(normals) == 0:
            raise ValueError(f"{self.name}.fit needs normal images (training is unsupervised: no anomalies, no masks)")
        from anoplug.zoo.vgg import VGGFeatures

        image, depth, edge = self.structure(normals)
        vgg = VGGFeatures(VGG_LAYERS[-1]).to(self.device) if self.params.w_vgg > 0 else None
        self.gan = HybridStep(self.G, self.D, self._training_batch, loss=self.params.gan_loss,
                              w_vgg=self.params.w_vgg, vgg=vgg, crop=self.params.vgg_crop, w_fusion=self.params.w_fusion)
        self._data = {"image": image, "depth": depth, "edge": edge}
        return self._data

    def training_views(self, image: torch.Tensor, depth: torch.Tensor, edge: torch.Tensor,
                       g: torch.Generator) -> dict[str, torch.Tensor]:
        """*paper*: content, depth and edge views under different augmentations; targets share their condition's."""
        vp = self.params.views()
        base = draw_affine(len(image), g, vp)
        vc = draw_view(base, g, vp, geo_prob=vp.geo_prob, tps_prob=1.0)
        vd, ve = (draw_view(base, g, vp, geo_prob=0.0, tps_prob=vp.cond_tps_prob) for _ in range(2))
        return {"content": apply_view(image, vc), "depth": apply_view(depth, vd), "target_depth": apply_view(image, vd),
                "edge": apply_view(edge, ve), "target_edge": apply_view(image, ve)}

    def _training_batch(self, ctx: StepContext) -> GANBatch:
        d, g = self._data, ctx.generator
        idx = torch.randint(len(d["image"]), (self.params.batch_size,), generator=g).to(self.device)
        v = self.training_views(d["image"][idx], d["depth"][idx], d["edge"][idx], g)
        zero = torch.zeros_like(v["depth"])
        cond = torch.cat([torch.cat([v["depth"], zero], 1), torch.cat([zero, v["edge"] * 2 - 1], 1)])
        extra = {}
        c, r = self.params.vgg_crop, self.resolution
        if 0 < c < r:
            top, left = (int(t) for t in torch.randint(r - c + 1, (2,), generator=g))
            extra["crop"] = (top, left)
        return GANBatch(real=torch.cat([v["target_depth"], v["target_edge"]]),
                        g_input=(v["content"], v["depth"], v["edge"]), d_cond=(cond,), extra=extra)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.params.beta1, self.params.beta2)
        return {n: torch.optim.Adam(m.parameters(), lr=self.params.lr, betas=betas) for n, m in self.modules().items()}

    def training_step(self, data: Any, step: int, generator: torch.Generator) -> dict[str, float]:
        if self.gan is None:
            raise NotFittedError(f"{self.name}: build() was not run")
        return self.gan(StepContext(step, 0, generator, self.trainer))

    # -- 5. inference: the draws ------------------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: decoder, edit kind and amplitude, the drawn ellipse and the crack's local polyline.

        The same number of draws whatever is given, so replay and the kit's seeding hold.
        """
        p, out = self.params, Samples()
        given = batch.conditions.target_mask is not None
        for rng in rngs:
            u = torch.rand(8, generator=rng).tolist()
            walk = torch.rand(4, 2, generator=rng)
            decoder = p.decoder if p.decoder != "random" else ("depth" if u[0] < 0.5 else "edge")
            if decoder == "edge":
                edit = "crack"
            else:
                edit = p.edit if p.edit != "random" else ("dent" if u[1] < 0.5 else "protrusion")
            ry = p.region_min + (p.region_max - p.region_min) * u[2]
            rx = p.region_min + (p.region_max - p.region_min) * u[3]
            rad = max(ry, rx)
            rec = {"decoder": decoder, "edit": edit,
                   "amplitude": p.edit_strength * (1 - p.edit_jitter * u[4]),
                   "region": "target_mask" if given else "ellipse",
                   "cy": rad + (1 - 2 * rad) * u[5], "cx": rad + (1 - 2 * rad) * u[6], "ry": ry, "rx": rx,
                   "angle": math.pi * u[7],
                   "crack": [[float(a), float(b)] for a, b in (walk * 1.6 - 0.8).tolist()]}
            out.append(rec)
        return out

    def _replayed(self, samples: Samples) -> Samples:
        keys = {"decoder", "edit", "amplitude", "region", "cy", "cx", "ry", "rx", "angle", "crack"}
        for i, s in enumerate(samples):
            if not isinstance(s, dict) or not keys <= set(s) or s["decoder"] not in ("depth", "edge"):
                raise ValueError(f"samples[{i}] is not an {self.name} draw record (needs {sorted(keys)})")
        return samples

    # -- 5. inference: the edits ------------------------------------------------------------------------------------------
    def regions(self, batch: Batch, samples: Samples) -> torch.Tensor:
        """The edit profile ``[B,1,r,r]`` in [0, 1]: a smoothed ``target_mask``, else a cos² ellipse per record.

        With ``edit="none"`` and no ``target_mask`` nothing says where the user edited the depth,
        so the profile is empty (the fusion map is then ``M_gen`` alone).
        """
        r, dev = self.resolution, self.device
        tm = batch.conditions.target_mask
        if tm is not None:
            return S.mask_profile((F.interpolate(tm.to(dev), size=(r, r), mode="area") > 0.5).float())
        empty = torch.zeros(1, r, r, device=dev)
        return torch.stack([empty if s["edit"] == "none" else
                            S.ellipse_profile(r, r, s["cy"], s["cx"], s["ry"], s["rx"], s["angle"], dev)
                            for s in samples])

    def edited(self, depth: torch.Tensor, edge: torch.Tensor, profile: torch.Tensor,
               samples: Samples) -> tuple[torch.Tensor, torch.Tensor]:
        """*paper*: manipulate the target's depth (dent: farther, protrusion: nearer) or its edge map (a stroke)."""
        r, dev = self.resolution, self.device
        sign = torch.tensor([{"dent": 1.0, "protrusion": -1.0}.get(s["edit"], 0.0) if s["decoder"] == "depth" else 0.0
                             for s in samples], device=dev).view(-1, 1, 1, 1)
        amp = torch.tensor([float(s["amplitude"]) for s in samples], device=dev).view(-1, 1, 1, 1)
        new_depth = depth + sign * amp * profile
        strokes = []
        for i, s in enumerate(samples):
            if s["decoder"] != "edge":
                strokes.append(torch.zeros(1, r, r, device=dev))
                continue
            cy, cx, hy, hx = self._extent(profile[i, 0], s)
            pts = [(cy + a * hy, cx + b * hx) for a, b in s["crack"]]
            strokes.append(S.crack_strokes(r, r, pts, self.params.crack_width, dev) * (profile[i] > 0.05).float())
        new_edge = torch.maximum(edge, torch.stack(strokes))
        return new_depth, new_edge

    @staticmethod
    def _extent(profile: torch.Tensor, s: dict) -> tuple[float, float, float, float]:
        """Centre and half-extent (fractions of the side) of a region: the record's ellipse, or the mask's bbox."""
        if s["region"] == "ellipse":
            return float(s["cy"]), float(s["cx"]), float(s["ry"]), float(s["rx"])
        ys, xs = (profile > 0.05).nonzero(as_tuple=True)
        if len(ys) == 0:
            return 0.5, 0.5, 0.0, 0.0
        n = profile.shape[-1]
        y0, y1, x0, x1 = float(ys.min()), float(ys.max()) + 1, float(xs.min()), float(xs.max()) + 1
        return (y0 + y1) / 2 / n, (x0 + x1) / 2 / n, (y1 - y0) / 2 / n, (x1 - x0) / 2 / n

    # -- 5./6. inference: generation and the mask ---------------------------------------------------------------------------
    def content_of(self, batch: Batch, work: torch.Tensor) -> torch.Tensor:
        """``C_in`` at the working size: the image itself for local anomalies."""
        return work

    def run(self, content: torch.Tensor, depth: torch.Tensor, edge: torch.Tensor, which: Sequence[str]
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_gen, M_gen) at the working size, each sample from its own decoder."""
        self.G.eval()
        res = self.G(content, depth, edge)
        pick = torch.tensor([w == "depth" for w in which], device=content.device).view(-1, 1, 1, 1)
        return (torch.where(pick, res["depth_source"], res["edge_source"]),
                torch.where(pick, res["depth_fusion"], res["edge_fusion"]))

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        drawn = self.sample(batch, rngs)
        samples = drawn if samples is None else self._replayed(Samples(samples))
        image, depth, edge = self.structure(batch)
        profile = self.regions(batch, samples)
        new_depth, new_edge = self.edited(depth, edge, profile, samples)
        content = self.content_of(batch, image)
        source, fusion = self.run(content, new_depth, new_edge, [s["decoder"] for s in samples])
        if self.params.fusion == "union":  # our assumption: the manipulated region is fused in, M_gen may add to it
            fusion = torch.maximum(fusion, profile)
        return self.finish(batch, content, source, fusion, samples), samples

    def finish(self, batch: Batch, content: torch.Tensor, source: torch.Tensor, fusion: torch.Tensor,
               samples: Samples) -> Batch:
        """Compose at full size, then keep the input outside ``(M_gen > threshold) ∧ (visible change)``."""
        full = batch.image.to(self.device)
        h, w = batch.size
        fused = _resize(fusion, (h, w)).clamp(0, 1)
        base = self._full_content(batch)  # C_in at full size: the image (local) or the reference (global)
        composed = compose(base, _resize(source, (h, w)).clamp(0, 1), fused)
        change = (composed - full).abs().amax(1, keepdim=True)
        mask = ((fused > self.params.mask_threshold) & (change > self.params.mask_tol)).float()
        out = torch.where(mask.bool(), composed, full).clamp(0, 1)
        labels = [s["edit"] if bool(mask[i].any()) else GOOD for i, s in enumerate(samples)]
        return Batch(image=out.float().contiguous(), mask=mask, label=labels, meta=[dict(m) for m in batch.meta],
                     object_mask=batch.object_mask, depth=batch.depth, text=batch.text)

    def _full_content(self, batch: Batch) -> torch.Tensor:
        return batch.image.to(self.device)


class AnomalyHybridGlobalParams(AnomalyHybridParams):
    decoder: Literal["depth", "edge", "random"] = Field(
        "random", description="AHD (depth-faithful) or AHE (looser, more diverse), or either at random per sample")


class AnomalyHybridGlobal(AnomalyHybrid):
    """Global anomalies (*paper*): a reference image's appearance on the target's *unmodified* depth and edges.

    ``C_in`` = ``conditions.source_image`` (paired automatically by the drivers); the mask is
    ``(M_gen > threshold) ∧ (change against the target image)`` and the output outside it is
    the target's own pixels. Nothing is edited: the structure is the target's; the seed picks
    the decoder per sample (``decoder="random"`` by default here).
    """

    name = "anomalyhybrid-global"
    title = "AnomalyHybrid (global): reference appearance on the target's depth and edges"
    Params = AnomalyHybridGlobalParams
    requires = Requires(fit=True, conditions=("source_image",))
    pretrained: ClassVar[dict[str, str]] = {"surface3d": "weights/surface3d"}

    @classmethod
    def load(cls, directory: str | Path) -> AnomalyHybrid:
        """A checkpoint of either name: both generators share one network, so a local one loads as global.

        Its parameters are kept except ``decoder``, which takes the global default (``"random"``).
        """
        d = Path(directory)
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            cfg = None
        if isinstance(cfg, dict) and cfg.get("name") == AnomalyHybrid.name:
            obj = cls(**{k: v for k, v in dict(cfg.get("params", {})).items() if k != "decoder"})
            obj.load_weights(d)
            return obj.mark_fitted(bool(cfg.get("fitted", True)))
        return super().load(d)

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        recs = super().sample(batch, rngs)
        for r in recs:
            r["edit"], r["region"] = "global", "none"
        return recs

    def regions(self, batch: Batch, samples: Samples) -> torch.Tensor:
        r = self.resolution
        return torch.zeros(len(batch), 1, r, r, device=self.device)

    def content_of(self, batch: Batch, work: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        return _resize(batch.conditions.source_image.to(self.device), (r, r)).clamp(0, 1)

    def _full_content(self, batch: Batch) -> torch.Tensor:
        return batch.conditions.source_image.to(self.device)
