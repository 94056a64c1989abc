"""EID-GAN (Li, Chen, Cao, Ma, Wang, Cui, Chen — IEEE TII 19(3):3208–3218, 2023).

"EID-GAN: Generative Adversarial Nets for Extremely Imbalanced Data Augmentation": a DCGAN
trained on defective images whose outlier covers ~0.05 % of the image, with a penalty that
makes the generator reproduce the outlier. Read top to bottom, as in the paper:

1. **Outlier dataset.** Each defective ("negative") training image times its outlier mask
   gives the known outlier ``ano_i``; its bounding box is the crop region.
2. **DCGAN.** G: Conv-BN-ReLU, D: Conv-BN-LeakyReLU (:mod:`anoplug_eid_gan.networks`),
   trained on the defective images with the non-saturating GAN loss: D on real, D on
   generated, then G (:class:`anoplug.train.GANStep`, one D and one G update per step).
3. **Outlier penalty.** Every G update crops, from each generated instance, a region of the
   size of a randomly drawn real outlier and adds λ·‖ano_i − G_crop(z)‖₁ to the generator loss
   (:func:`anoplug_eid_gan.penalty.crop_penalty`; λ = 0.01 on Fabric in the paper). Where the
   crop sits is not in what we read of the paper: by default (``crop_location="centre"``) every
   outlier's box is moved to the image centre, so one region of G(z) learns "the outlier".
4. **Generation.** G(z) is a whole defective instance. ``output="instance"`` returns it with
   the crop region as mask. The default ``output="paste"`` (anoplug's contract, our
   integration) pastes the outlier crop of G(z) into the *input* image at the requested outlier
   region (``conditions.target_mask`` or ``conditions.boxes``), else at the location of a
   training outlier drawn per sample; mask = region ∧ visible change, pixels outside it are
   the input's own.
5. **Evaluation protocol** (two outlier detectors, k-fold): :mod:`anoplug_eid_gan.protocol`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from anoplug.conditions import ConditionError
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.train import GANBatch, GANStep, StepContext
from anoplug.types import GOOD, Batch
from anoplug_eid_gan.networks import DCGANDiscriminator, DCGANGenerator, check_resolution, dcgan_init
from anoplug_eid_gan.penalty import centre_boxes, crop_penalty, mask_boxes, shift_to

__all__ = ["EIDGAN", "EIDGANParams", "PRESETS", "Preset", "prepare_outliers"]


@dataclass(frozen=True)
class Preset:
    """The sizes a preset fixes unless a parameter overrides them (0 = take the preset's)."""

    resolution: int
    width: int
    max_width: int
    batch_size: int
    penalty_weight: float


#: Outlier pixels the paper's λ = 0.01 was set for: 1/2000 of a 1024² Fabric image (~524).
PAPER_OUTLIER_PIXELS = 1024 * 1024 / 2000

#: paper: the Fabric data's 1024² side, DCGAN's ngf = ndf = 64, the paper's batch of 1, λ = 0.01.
#: cpu: the smallest faithful version (64², width 16: 0.55 M parameters for G + D, a 2.2 MB
#: checkpoint), batch 8, λ = 3 — tuned on toy:fabric (README): the paper's 0.01, and even 0.17
#: (0.01 × 524 / 32, the same summed penalty per instance on our ~32-pixel outliers), leave the
#: crop error where λ = 0 leaves it, 10 wrecks the background, as the paper reports for large λ.
PRESETS: dict[str, Preset] = {"paper": Preset(1024, 64, 512, 1, 0.01), "cpu": Preset(64, 16, 128, 8, 3.0)}


class EIDGANParams(Params):
    preset: Literal["paper", "cpu"] = Field("cpu", description="sizes: 'paper' (1024², width 64, batch 1) or 'cpu' "
                                            "(64², width 16, batch 8); the fields below override it where non-zero")
    resolution: int = Field(0, ge=0, le=2048, description="DCGAN side, a power of two >= 16 (0 = preset's)")
    width: int = Field(0, ge=0, le=512, description="DCGAN base width ngf = ndf (0 = preset's; DCGAN: 64)")
    max_width: int = Field(0, ge=0, le=4096, description="channel cap of the deepest layers (0 = preset's)")
    z_dim: int = Field(100, ge=1, le=1024, description="latent size (DCGAN: 100)")
    batch_size: int = Field(0, ge=0, le=512, description="training batch (0 = preset's; paper: 1)")
    epochs: int = Field(100, ge=1, le=100_000, description="passes over the training defects when fit_steps is 0 "
                        "(paper: 100)")
    fit_steps: int = Field(0, ge=0, le=10_000_000, description="training steps (0 = epochs x defects / batch)")
    lr: float = Field(2e-4, gt=0, le=1.0, description="Adam learning rate of G and D (DCGAN: 2e-4)")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 (DCGAN: 0.5)")
    penalty_weight: float = Field(-1.0, ge=-1, le=1e4, description="lambda of the outlier penalty (-1 = preset's: "
                                  "paper 0.01, cpu 3; 0 = a plain DCGAN)")
    penalty_norm: Literal["l1", "l2"] = Field("l1", description="l1 = summed |ano - G_crop| (paper), l2 = summed square")
    penalty_region: Literal["mask", "box"] = Field("mask", description="compare the outlier's pixels only (mask) or "
                                                   "the whole crop against image x mask (box, literal)")
    crop_location: Literal["centre", "outlier"] = Field("centre", description="where the crop is taken from G(z): "
                                                        "centred on the image (one region for every outlier) or at "
                                                        "the drawn outlier's own location")
    max_outlier_area: float = Field(1.0, gt=0, le=1.0, description="train only on defects whose mask covers at most "
                                    "this fraction of the image (1 = all)")
    output: Literal["paste", "instance"] = Field("paste", description="paste the generated outlier into the input "
                                                 "(default) or return the whole generated instance")
    tol_levels: int = Field(1, ge=0, le=254, description="a pixel is changed when it moves by more than this many "
                            "grey levels (mask = region and changed)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit's draws (init, batches, latents)")

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v:
            check_resolution(v)
        return v


def _resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Binary masks at ``size``: area-averaged and kept where > 0.2 when shrinking (a tiny outlier survives,
    as the toy renderer does), nearest when enlarging."""
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return (masks > 0.5).float()
    if masks.shape[-1] > size:
        return (F.interpolate(masks.float(), size=(size, size), mode="area") > 0.2).float()
    return (F.interpolate(masks.float(), size=(size, size), mode="nearest") > 0.5).float()


def prepare_outliers(anomalies: Batch, resolution: int, max_area: float = 1.0,
                     crop_location: Literal["centre", "outlier"] = "centre") -> dict[str, Any]:
    """Step 1: the defective images at ``resolution`` (in [0, 1]), their outlier masks, boxes and labels.

    Defects whose mask covers more than ``max_area`` of the image are left out (an "extremely
    imbalanced" training set keeps only tiny outliers). ``crop_boxes`` are where the penalty
    crops G(z) (``crop_location``); ``crop_images`` / ``crop_masks`` are the images and masks
    translated so that each outlier sits in its crop box (the penalty's targets).
    """
    if anomalies is None or len(anomalies) == 0:
        raise ValueError("eid-gan.fit needs anomalies: defective images with their outlier masks")
    if anomalies.mask is None:
        raise ValueError("eid-gan.fit needs the anomalies' masks (the outlier regions)")
    img = anomalies.image
    if tuple(img.shape[-2:]) != (resolution, resolution):
        img = F.interpolate(img, size=(resolution, resolution), mode="bilinear", align_corners=False,
                            antialias=img.shape[-1] > resolution).clamp(0, 1)
    masks = _resize_masks(anomalies.mask, resolution)
    area = masks.flatten(1).mean(1)
    keep = [i for i in range(len(anomalies)) if float(area[i]) > 0 and float(area[i]) <= max_area
            and anomalies.label[i] != GOOD]
    if not keep:
        nonzero = area[area > 0]
        smallest = f"the smallest covers {float(nonzero.min()):.4f}" if len(nonzero) else "every mask is empty"
        raise ValueError(f"eid-gan.fit: no anomaly has a non-empty mask covering at most max_outlier_area={max_area} "
                         f"of the image at {resolution}² ({smallest})")
    masks, img = masks[keep].contiguous(), img[keep].float().contiguous()
    boxes = mask_boxes(masks)
    crop = crop_boxes(boxes, resolution, crop_location)
    return {"images": img, "masks": masks, "boxes": boxes, "labels": [anomalies.label[i] for i in keep],
            "area": area[keep], "crop_boxes": crop, "crop_images": shift_to(img, boxes, crop),
            "crop_masks": shift_to(masks, boxes, crop)}


def crop_boxes(boxes: torch.Tensor, resolution: int, crop_location: Literal["centre", "outlier"]) -> torch.Tensor:
    """Where the penalty crops G(z) for each outlier: its box moved to the image centre, or where it is."""
    return centre_boxes(boxes, resolution) if crop_location == "centre" else boxes.clone()


class EIDGAN(LearnedGenerator):
    """Fit on defective images with masks (tiny outliers), then generate: paste the outlier, or whole instances.

    ``conditions.target_mask`` or ``conditions.boxes`` (optional) say where the outlier goes.
    """

    name = "eid-gan"
    title = "EID-GAN: DCGAN with an outlier-crop penalty for extremely imbalanced data"
    category = "gan"
    tags = ("dcgan", "tiny-defects")
    paper = Paper("EID-GAN: Generative Adversarial Nets for Extremely Imbalanced Data Augmentation",
                  "IEEE Transactions on Industrial Informatics 19(3):3208-3218", 2023,
                  "https://doi.org/10.1109/TII.2022.3182781")
    Params = EIDGANParams
    requires = Requires(fit=True, anomalies=True, accepts=("target_mask", "boxes"))
    preserves_outside_mask: ClassVar[bool] = True  # output="paste" (the default)
    manual_optimization: ClassVar[bool] = True  # GANStep steps G and D itself
    pretrained: ClassVar[dict[str, str]] = {"fabric": "weights/fabric"}

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.G: DCGANGenerator | None = None
        self.D: DCGANDiscriminator | None = None
        self.outlier_boxes: torch.Tensor | None = None  # [N, 4] at the training resolution
        self.outlier_masks: torch.Tensor | None = None  # [N, 1, R, R] in {0, 1}
        self.outlier_labels: list[str] = []
        self.history: list[dict] = []

    @property
    def resolved(self) -> Preset:
        """The preset with the non-zero size fields applied."""
        p, base = self.params, PRESETS[self.params.preset]
        return Preset(p.resolution or base.resolution, p.width or base.width, p.max_width or base.max_width,
                      p.batch_size or base.batch_size,
                      base.penalty_weight if p.penalty_weight < 0 else p.penalty_weight)

    # -- networks and persistence ------------------------------------------------------------------
    def _build_networks(self, generator: torch.Generator) -> None:
        r = self.resolved
        self.G = dcgan_init(DCGANGenerator(r.resolution, r.width, self.params.z_dim, r.max_width), generator)
        self.D = dcgan_init(DCGANDiscriminator(r.resolution, r.width, r.max_width), generator)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"G": self.G, "D": self.D} if self.G is not None else {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The outlier masks inside their boxes, concatenated (uint8): all generation needs of the training data."""
        if self.outlier_masks is None:
            return {}
        parts = [self.outlier_masks[k, 0, y0:y1, x0:x1].flatten()
                 for k, (y0, x0, y1, x1) in enumerate(self.outlier_boxes.tolist())]
        return {"outlier_shapes": (torch.cat(parts) > 0.5).to(torch.uint8).cpu()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        if set(tensors) != {"outlier_shapes"} or self.outlier_boxes is None:
            raise ValueError(f"{self.name}: expected extra tensor outlier_shapes for {len(self.outlier_labels)} "
                             f"outliers, got {sorted(tensors)}")
        flat, boxes = tensors["outlier_shapes"].flatten(), self.outlier_boxes.tolist()
        sizes = [(y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in boxes]
        if len(flat) != sum(sizes):
            raise ValueError(f"{self.name}: outlier_shapes holds {len(flat)} values, the boxes need {sum(sizes)}")
        r = self.resolved.resolution
        masks = torch.zeros(len(boxes), 1, r, r)
        for k, (part, (y0, x0, y1, x1)) in enumerate(zip(flat.split(sizes), boxes)):
            masks[k, 0, y0:y1, x0:x1] = (part > 0).float().view(y1 - y0, x1 - x0)
        self.outlier_masks = masks

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if self.outlier_boxes is not None:
            cfg["outliers"] = {"boxes": self.outlier_boxes.tolist(), "labels": list(self.outlier_labels)}
        return cfg

    def restore_config(self, config: dict[str, Any]) -> None:
        out = config.get("outliers")
        if not out:
            return
        self._build_networks(torch.Generator().manual_seed(0))  # the weights file overwrites these values
        self.train_mode(False)
        r = self.resolved.resolution
        self.outlier_boxes = torch.tensor(out["boxes"], dtype=torch.long).view(-1, 4)
        self.outlier_labels = [str(s) for s in out["labels"]]
        self.outlier_masks = torch.zeros(len(self.outlier_labels), 1, r, r)

    # -- training (steps 1–3) ---------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Step 1, then the DCGAN (DCGAN init from ``generator``) and its GAN step with the penalty.

        ``normals`` are not used for training: the GAN learns the *defective* images
        (generation takes normals as input in ``output="paste"``).
        """
        p, r = self.params, self.resolved
        data = prepare_outliers(anomalies, r.resolution, p.max_outlier_area, p.crop_location)
        self._build_networks(generator)
        self.outlier_boxes, self.outlier_masks, self.outlier_labels = data["boxes"], data["masks"], data["labels"]
        images = data["images"]
        targets, masks, boxes = data["crop_images"], data["crop_masks"], data["crop_boxes"]

        def sample(ctx: StepContext) -> GANBatch:
            idx = torch.randint(len(images), (r.batch_size,), generator=ctx.generator)
            z = torch.randn(r.batch_size, p.z_dim, generator=ctx.generator)
            device = next(self.G.parameters()).device
            return GANBatch(real=images[idx].to(device) * 2 - 1, g_input=z.to(device), extra={"idx": idx})

        def penalty(ctx: StepContext, batch: GANBatch, fake: torch.Tensor, fake_out: torch.Tensor) -> dict:
            """Step 3: λ‖ano − G_crop(z)‖ on the batch's own outliers (images back in [0, 1])."""
            if r.penalty_weight == 0:
                return {}
            i = batch.extra["idx"]
            return {"penalty": crop_penalty((fake + 1) / 2, targets[i].to(fake.device), masks[i].to(fake.device),
                                            boxes[i].to(fake.device), weight=r.penalty_weight, norm=p.penalty_norm,
                                            region=p.penalty_region)}

        # steps 2-3: D on real and generated, then G with the penalty in its loss (one batch per iteration, as DCGAN)
        self.gan = GANStep(self.G, self.D, sample, loss="nonsaturating", n_critic=1, g_extra=penalty)
        return data

    def planned_steps(self, steps: int | None, data: dict[str, Any]) -> int:
        if steps is not None:
            return int(steps)
        if self.params.fit_steps:
            return self.params.fit_steps
        per_epoch = -(-len(data["labels"]) // self.resolved.batch_size)
        return self.params.epochs * per_epoch

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.params.beta1, 0.999)
        return {"G": torch.optim.Adam(self.G.parameters(), lr=self.params.lr, betas=betas),
                "D": torch.optim.Adam(self.D.parameters(), lr=self.params.lr, betas=betas)}

    def training_step(self, data: Any, step: int, generator: torch.Generator) -> dict[str, Any]:
        return self.gan(StepContext(step, 0, generator, self.trainer))

    # -- generation (step 4) -------------------------------------------------------------------------
    def _pool(self, label: Any) -> list[int]:
        """Training outliers a region may take its crop from: those of the box's label if it names a fitted type."""
        same = [k for k, lab in enumerate(self.outlier_labels) if lab == label]
        return same or list(range(len(self.outlier_labels)))

    def _regions_asked(self, batch: Batch) -> list[list[Any]]:
        """Per sample, one entry per requested region (the box label, or None)."""
        c = batch.conditions
        if c.target_mask is not None and c.boxes is not None:
            raise ConditionError(f"{self.name}: give conditions.target_mask or conditions.boxes, not both")
        if self.params.output == "instance" and (c.target_mask is not None or c.boxes is not None):
            raise ConditionError(f"{self.name}: output='instance' returns whole generated images; conditions.target_mask"
                                 " / conditions.boxes are honoured only with output='paste'")
        if c.boxes is not None:
            return [[b[0] for b in row] for row in c.boxes]
        return [[None] for _ in range(len(batch))]

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per region, the training outlier whose crop of G(z) is used (the latent is drawn later from the same rng)."""
        if self.outlier_boxes is None:
            raise NotFittedError(f"{self.name} has no training outliers: fit or load it first")
        out = Samples()
        for g, asked in zip(rngs, self._regions_asked(batch)):
            ks = []
            for label in asked:
                pool = self._pool(label)
                ks.append(pool[int(torch.randint(len(pool), (1,), generator=g))])
            out.append({"outliers": ks})
        return out

    def _replayed(self, samples: Samples, drawn: Samples) -> Samples:
        n = len(self.outlier_labels)
        for i, (s, d) in enumerate(zip(samples, drawn)):
            ks = s.get("outliers") if isinstance(s, dict) else None
            if (not isinstance(ks, list) or len(ks) != len(d["outliers"])
                    or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < n for k in ks)):
                raise ValueError(f"samples[{i}]['outliers'] must be {len(d['outliers'])} ints in [0, {n}), got {ks!r}")
        return Samples({"outliers": list(s["outliers"])} for s in samples)

    @torch.no_grad()
    def instances(self, rngs: Sequence[torch.Generator]) -> torch.Tensor:
        """G(z) in [0, 1], one latent per rng. One forward per sample (eval-mode BN), so a sample never
        depends on its batch-mates or on the batch size, bit for bit."""
        self.G.eval()
        device = next(self.G.parameters()).device
        z = [torch.randn(1, self.params.z_dim, generator=g, device=g.device).to(device) for g in rngs]
        return torch.cat([(self.G(zi) + 1) / 2 for zi in z]).clamp(0, 1)

    def _crop_box(self, k: int) -> tuple[int, int, int, int]:
        """Where the penalty cropped G(z) for training outlier ``k`` (y0, x0, y1, x1 at the training resolution)."""
        box = crop_boxes(self.outlier_boxes[k:k + 1], self.resolved.resolution, self.params.crop_location)[0]
        return tuple(int(v) for v in box)

    def _region_shape(self, k: int) -> torch.Tensor:
        """The penalised pixels of outlier ``k`` inside its box, ``[1, h, w]`` bool (all of it for ``"box"``)."""
        y0, x0, y1, x1 = (int(v) for v in self.outlier_boxes[k])
        shape = self.outlier_masks[k][:, y0:y1, x0:x1] > 0.5
        return shape if self.params.penalty_region == "mask" else torch.ones_like(shape)

    def _source_region(self, k: int) -> torch.Tensor:
        """The crop region of training outlier ``k`` on G(z) (what the penalty compared), ``[1, R, R]``."""
        r = self.resolved.resolution
        y0, x0, y1, x1 = self._crop_box(k)
        out = torch.zeros(1, r, r)
        out[:, y0:y1, x0:x1] = self._region_shape(k).float()
        return out

    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Draw (or replay) the outliers, then G(z) per sample, then paste (or return) the instance."""
        drawn = self.sample(batch, rngs)  # advances every rng to where its latent starts, replay or not
        samples = drawn if samples is None else self._replayed(samples, drawn)
        fake = self.instances(rngs).to(batch.image.device)
        if self.params.output == "instance":
            return self._instance_batch(batch, fake, samples), samples
        h, w = batch.size
        pasted = batch.image.clone()
        region = torch.zeros(len(batch), 1, h, w, device=batch.image.device)
        labels: list[list[str]] = []
        for i, s in enumerate(samples):
            labels.append([])
            for j, k in enumerate(s["outliers"]):
                if self._paste_one(pasted[i], region[i], fake[i], k, batch, i, j):
                    labels[i].append(self.outlier_labels[k])
        pasted = (pasted * 255).round() / 255  # on the uint8 grid: a PNG keeps these bytes
        changed = ((pasted - batch.image).abs().amax(1, keepdim=True) * 255).round() > self.params.tol_levels
        mask = (region.bool() & changed).float()
        image = torch.where(mask.bool(), pasted, batch.image)
        label = [lab[0] if lab and bool(mask[i].any()) else GOOD for i, lab in enumerate(labels)]
        return Batch(image=image.contiguous(), mask=mask, label=label, meta=[dict(m) for m in batch.meta],
                     object_mask=batch.object_mask, depth=batch.depth, text=batch.text), samples

    def _paste_one(self, out: torch.Tensor, region: torch.Tensor, fake: torch.Tensor, k: int, batch: Batch,
                   i: int, j: int) -> bool:
        """Paste the crop of training outlier ``k`` from G(z) ``fake`` into ``out`` (in place) at region ``j`` of
        sample ``i``; return whether the region is non-empty."""
        h, w = out.shape[-2:]
        r = self.resolved.resolution
        y0, x0, y1, x1 = (int(v) for v in self.outlier_boxes[k])  # the outlier's place in its real image
        cy0, cx0, cy1, cx1 = self._crop_box(k)
        crop = fake[:, cy0:cy1, cx0:cx1]
        shape_src = self._region_shape(k).to(out.device).float()
        c = batch.conditions
        if c.target_mask is not None:
            target = c.target_mask[i] > 0.5
            if not bool(target.any()):
                return False
            ty0, tx0, ty1, tx1 = (int(v) for v in mask_boxes(target[None].float())[0])
            shape = target[:, ty0:ty1, tx0:tx1]
        else:
            if c.boxes is not None:
                _, bx1, by1, bx2, by2 = c.boxes[i][j]
                ty0, tx0 = int(by1 * h), int(bx1 * w)
                ty1, tx1 = max(ty0 + 1, round(by2 * h)), max(tx0 + 1, round(bx2 * w))
            else:  # the training outlier's own location, scaled to the input
                ty0, tx0 = y0 * h // r, x0 * w // r
                ty1, tx1 = max(ty0 + 1, -(-y1 * h // r)), max(tx0 + 1, -(-x1 * w // r))
            ty1, tx1 = min(ty1, h), min(tx1, w)
            shape = F.interpolate(shape_src[None], size=(ty1 - ty0, tx1 - tx0), mode="nearest")[0] > 0.5
        th, tw = ty1 - ty0, tx1 - tx0
        content = crop
        if (th, tw) != tuple(crop.shape[-2:]):
            content = F.interpolate(crop[None], size=(th, tw), mode="bilinear", align_corners=False,
                                    antialias=th < crop.shape[-2] or tw < crop.shape[-1])[0].clamp(0, 1)
        win = out[:, ty0:ty1, tx0:tx1]
        out[:, ty0:ty1, tx0:tx1] = torch.where(shape, content, win)
        region[:, ty0:ty1, tx0:tx1] = torch.maximum(region[:, ty0:ty1, tx0:tx1], shape.float())
        return bool(shape.any())

    def _instance_batch(self, batch: Batch, fake: torch.Tensor, samples: Samples) -> Batch:
        """``output="instance"``: G(z) at the input size, mask = the crop region of the drawn outlier."""
        h, w = batch.size
        image = fake
        if tuple(fake.shape[-2:]) != (h, w):
            image = F.interpolate(fake, size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=h < fake.shape[-2]).clamp(0, 1)
        src = torch.stack([self._source_region(s["outliers"][0]) for s in samples]).to(image.device)
        mask = (F.interpolate(src, size=(h, w), mode="nearest") > 0.5).float()
        label = [self.outlier_labels[s["outliers"][0]] if bool(mask[i].any()) else GOOD for i, s in enumerate(samples)]
        return Batch(image=image.contiguous(), mask=mask, label=label, meta=[dict(m) for m in batch.meta],
                     object_mask=batch.object_mask, depth=batch.depth, text=batch.text)
