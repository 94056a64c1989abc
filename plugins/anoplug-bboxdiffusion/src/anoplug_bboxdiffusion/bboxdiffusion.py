"""Bounding-box-guided diffusion (Simoni & Pelosin, CVPRW 2025): an image and its segmentation map from boxes.

A pixel-space DDPM, trained from scratch, denoises the RGB image *and* its class map
together. The class map is stored as ⌈log₂C⌉ "analog bit" channels in {−1, +1}. The model
is conditioned by concatenating two maps: a box-aware signed distance (BASD, positive
inside a box, negative outside, divided by the image diagonal, −1 without boxes) and the
class of each box in analog bits. One sample therefore gives an image and a mask that are
aligned by construction, for the boxes you ask for.

Network and schedule follow the paper's config: ``UNet2DModel`` with channels
(128,128,256,256,512,512), in = 3 + bits + 1 + bits, out = 3 + bits; DDPM linear β
1e-4→0.02 over 1000 steps, ε-prediction, clipped samples, all 1000 steps at sampling;
AdamW lr 1e-5, batch 8, 300 epochs. ``model="tiny"`` swaps in a small UNet for CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from anoplug.conditions import ConditionError
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.types import GOOD, Batch

BACKGROUND = "background"
Box = tuple[int, float, float, float, float]  # (class id ≥ 1, x1, y1, x2, y2) in [0, 1], as the encodings take it


# -- the encodings of the paper -------------------------------------------------------------------
def n_bits(n_classes: int) -> int:
    return max(1, math.ceil(math.log2(max(2, n_classes))))


def to_bits(ids: torch.Tensor, bits: int) -> torch.Tensor:
    """Class ids ``[B,1,H,W]`` → analog bits ``[B,bits,H,W]`` in {−1, +1}, most significant bit first."""
    shifts = torch.arange(bits - 1, -1, -1, device=ids.device)
    b = (ids.long() >> shifts.view(1, -1, 1, 1)) & 1
    return b.float() * 2 - 1


def from_bits(x: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Analog bits → class ids (threshold 0); ids that name no class become background (0)."""
    bits = x.shape[1]
    weights = (2 ** torch.arange(bits - 1, -1, -1, device=x.device)).view(1, -1, 1, 1)
    ids = ((x > 0).long() * weights).sum(1, keepdim=True)
    return torch.where(ids < n_classes, ids, torch.zeros_like(ids))


def basd(boxes: Sequence[Box], h: int, w: int) -> torch.Tensor:
    """Box-aware signed distance ``[1,H,W]``: distance to the nearest box border, + inside, − outside, / diagonal.

    Inside several boxes the smaller positive distance wins; outside all, the nearest box.
    """
    if not boxes:
        return torch.full((1, h, w), -1.0)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None].expand(h, w)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5)[None, :].expand(h, w)
    b = torch.tensor([[x1 * w, y1 * h, x2 * w, y2 * h] for _, x1, y1, x2, y2 in boxes])[:, :, None, None]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)  # [K,H,W]
    d_in = torch.minimum(torch.minimum(xs - x1, x2 - xs), torch.minimum(ys - y1, y2 - ys))
    dx = torch.clamp(torch.maximum(x1 - xs, xs - x2), min=0)
    dy = torch.clamp(torch.maximum(y1 - ys, ys - y2), min=0)
    d_out = -torch.sqrt(dx**2 + dy**2)
    pos = torch.where(inside, d_in, torch.full_like(d_in, float("inf"))).min(0).values
    neg = torch.where(inside, torch.full_like(d_out, -float("inf")), d_out).max(0).values
    d = torch.where(inside.any(0), pos, neg)
    return (d / math.hypot(h, w))[None]


def class_map(boxes: Sequence[Box], h: int, w: int) -> torch.Tensor:
    """Class id of each box painted inside it (later boxes on top), 0 elsewhere: ``[1,H,W]``."""
    m = torch.zeros(1, h, w)
    for c, x1, y1, x2, y2 in boxes:
        r0, r1 = int(math.floor(y1 * h)), max(int(math.floor(y1 * h)) + 1, int(math.ceil(y2 * h)))
        c0, c1 = int(math.floor(x1 * w)), max(int(math.floor(x1 * w)) + 1, int(math.ceil(x2 * w)))
        m[:, r0:r1, c0:c1] = float(c)
    return m


def boxes_from_mask(mask: torch.Tensor, class_id: int) -> list[Box]:
    """One box per 8-connected component of a binary mask ``[1,H,W]`` (normalised corners)."""
    from scipy import ndimage

    m = mask[0].cpu().numpy() > 0.5
    lab, _ = ndimage.label(m, structure=np.ones((3, 3)))
    h, w = m.shape
    return [(class_id, sl[1].start / w, sl[0].start / h, sl[1].stop / w, sl[0].stop / h)
            for sl in ndimage.find_objects(lab) if sl is not None]


# -- parameters and the network --------------------------------------------------------------------
class BBoxDiffusionParams(Params):
    model: Literal["paper", "tiny"] = Field("paper", description="UNet: the paper's 6-level config or a tiny CPU one")
    train_steps: int = Field(1000, ge=2, le=4000, description="diffusion timesteps T (linear β 1e-4→0.02)")
    sample_steps: int = Field(1000, ge=1, le=4000, description="DDPM steps at sampling (paper: all 1000)")
    lr: float = Field(1e-5, gt=0, le=1.0, description="AdamW learning rate")
    batch_size: int = Field(8, ge=1, le=256, description="training batch size")
    epochs: int = Field(300, ge=1, le=10_000, description="training epochs (fit(steps=...) overrides)")
    layout: Literal["dataset", "random"] = Field(
        "dataset", description="boxes when generate() gets none: a real layout of the fitted data (official "
        "test_ours.py samples dataset layouts) or 'random' boxes from the fitted size ranges")
    max_boxes: int = Field(2, ge=1, le=16, description="boxes per sample for layout='random'")
    anomaly_type: str = Field("", description="class of drawn boxes ('' = drawn per box among the fitted classes)")
    seed: int = Field(1234, ge=0, le=2**31 - 1, description="seed of fit's draws (batches, noise, timesteps); "
                      "fit(seed=) overrides it")


def build_unet(model: str, in_ch: int, out_ch: int, size: int) -> nn.Module:
    from diffusers import UNet2DModel

    from anoplug.diffusion.tiny import seeded, tiny_pixel_unet

    if model == "tiny":
        return tiny_pixel_unet(sample_size=size, in_channels=in_ch, out_channels=out_ch, block_out_channels=(32, 64))
    with seeded(1234):
        return UNet2DModel(sample_size=size, in_channels=in_ch, out_channels=out_ch, layers_per_block=2,
                           block_out_channels=(128, 128, 256, 256, 512, 512),
                           down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
                           norm_num_groups=32, downsample_padding=0,
                           # the official network_config (configs/paper/ours.yaml) departs from diffusers'
                           # defaults here: one attention head per layer (attention_head_dim null), the
                           # sinusoid order and shift of its timestep embedding, and the norms' epsilon
                           attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6)


def make_ddpm(train_steps: int) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=train_steps, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         prediction_type="epsilon", clip_sample=True, variance_type="fixed_small")


class BBoxDiffusion(LearnedGenerator):
    """``fit(normals, anomalies)`` learns image + class map from boxes; ``generate(batch)`` draws boxes or reads them.

    ``batch.conditions.boxes`` (optional): one list per sample of ``(label, x1, y1, x2, y2)``,
    the label a fitted class name or id; without it each sample draws its boxes.
    """

    name = "bboxdiffusion"
    title = "BBox-guided diffusion: image and segmentation map from boxes"
    category = "diffusion-image"
    tags = ("mask",)
    paper = Paper("Bounding Box-Guided Diffusion for Synthesizing Industrial Images and Segmentation Maps", "CVPRW", 2025,
                  "https://arxiv.org/abs/2505.03623", "https://github.com/covisionlab/diffusion_labeling")
    Params = BBoxDiffusionParams
    generation_params = ("sample_steps", "layout", "max_boxes", "anomaly_type")
    requires = Requires(fit=True, anomalies=True, accepts=("boxes",))
    preserves_outside_mask: ClassVar[bool] = False  # the whole image is generated

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.classes: list[str] = []
        self.size: int = 0
        self.unet: nn.Module | None = None
        self.box_stats: dict[str, float] = {}
        self.layouts: list[list[tuple[str, float, float, float, float]]] = []  # the fitted anomalies' boxes
        self.history: list[dict] = []

    @property
    def bits(self) -> int:
        return n_bits(len(self.classes))

    @property
    def losses(self) -> list[float]:
        """Loss per step of the last fit."""
        return [h["loss"] for h in self.history]

    def _build(self, classes: Sequence[str], size: int) -> None:
        levels = 2 if self.params.model == "tiny" else 6
        if size % 2 ** (levels - 1):
            raise ValueError(f"{self.name}: image side {size} must be divisible by {2 ** (levels - 1)} "
                             f"for model={self.params.model!r}")
        self.classes, self.size = [BACKGROUND, *classes], size
        self.unet = build_unet(self.params.model, 3 + 2 * self.bits + 1, 3 + self.bits, size)

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet} if self.unet is not None else {}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "classes": self.classes, "size": self.size, "box_stats": self.box_stats,
                "layouts": [[list(b) for b in row] for row in self.layouts], "last_losses": self.losses[-10:]}

    def restore_config(self, config: dict[str, Any]) -> None:
        if config.get("classes"):
            self._build(config["classes"][1:], int(config["size"]))
            self.box_stats = dict(config.get("box_stats", {}))
            self.layouts = [[tuple(b) for b in row] for row in config.get("layouts", [])]

    # -- conditions -------------------------------------------------------------------------------
    def condition(self, boxes: Sequence[Sequence[Box]], h: int, w: int) -> torch.Tensor:
        """``[B, 1 + bits, H, W]``: BASD and the box class map in analog bits."""
        maps = [torch.cat([basd(bx, h, w), to_bits(class_map(bx, h, w)[None], self.bits)[0]]) for bx in boxes]
        return torch.stack(maps)

    # -- training ---------------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """The UNet for the fitted classes, and the training pairs: anomalies (boxes = connected components of
        their masks) and normals (no boxes), each as image + class map in analog bits and its condition."""
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies with masks and labels (the boxes come from them)")
        data = anomalies if normals is None else Batch.cat([normals, anomalies])
        h, w = data.size
        if h != w:
            raise ValueError(f"{self.name}: square images only for now, got {h}x{w}")
        self._build(sorted({lab for lab in anomalies.label if lab != GOOD}), h)
        boxes = [boxes_from_mask(data.mask[i], self.classes.index(lab)) if lab != GOOD else []
                 for i, lab in enumerate(data.label)]
        self.layouts = [[(self.classes[c], round(x1, 4), round(y1, 4), round(x2, 4), round(y2, 4))
                         for c, x1, y1, x2, y2 in bx] for bx in boxes if bx]
        sizes = [(x2 - x1, y2 - y1) for bx in boxes for _, x1, y1, x2, y2 in bx]
        if sizes:
            ws, hs = zip(*sizes)
            self.box_stats = {"w_min": min(ws), "w_max": max(ws), "h_min": min(hs), "h_max": max(hs)}
        target_ids = torch.stack([torch.where(data.mask[i] > 0.5, float(self.classes.index(lab)) if lab != GOOD else 0.0,
                                              0.0) for i, lab in enumerate(data.label)])
        x0 = torch.cat([data.image * 2 - 1, to_bits(target_ids, self.bits)], 1)
        return {"x0": x0, "cond": self.condition(boxes, h, w), "sched": make_ddpm(self.params.train_steps)}

    def planned_steps(self, steps: int | None, data: dict[str, Any]) -> int:
        """``steps``, or ``epochs`` passes over the data at ``batch_size``."""
        if steps is not None:
            return int(steps)
        return self.params.epochs * math.ceil(len(data["x0"]) / self.params.batch_size)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": torch.optim.AdamW(self.unet.parameters(), lr=self.params.lr)}

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> torch.Tensor:
        """The ε-prediction loss on a random batch (draws: indices, noise, timesteps)."""
        x0, g = data["x0"], generator
        idx = torch.randint(0, len(x0), (min(self.params.batch_size, len(x0)),), generator=g)
        noise = torch.randn(x0[idx].shape, generator=g)
        t = torch.randint(0, self.params.train_steps, (len(idx),), generator=g)
        x_t = data["sched"].add_noise(x0[idx], noise, t)
        return F.mse_loss(self.unet(torch.cat([x_t, data["cond"][idx]], 1), t).sample, noise)

    # -- generation ---------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: a real layout of the fitted data (``layout="dataset"``, as the official sampling
        reads layouts from a split file), or boxes whose count, class, size and place are drawn from
        the fitted box statistics (``layout="random"``)."""
        if not self.classes:
            raise NotFittedError(f"{self.name} is not fitted")
        if self.params.layout == "dataset" and self.layouts:
            pool = self.layouts
            if self.params.anomaly_type:
                name = self.classes[self._class_id(self.params.anomaly_type)]
                pool = [row for row in pool if any(b[0] == name for b in row)]
            if not pool:
                raise ValueError(f"no fitted layout holds a box of anomaly_type {self.params.anomaly_type!r}")
            return Samples([{"boxes": [tuple(b) for b in pool[int(torch.randint(len(pool), (1,), generator=g))]]}
                            for g in rngs])
        st = self.box_stats or {"w_min": 0.1, "w_max": 0.4, "h_min": 0.1, "h_max": 0.4}
        out = Samples()
        for g in rngs:
            k = int(torch.randint(1, self.params.max_boxes + 1, (1,), generator=g))
            u = torch.rand(k, 5, generator=g).tolist()
            boxes = []
            for a, b, c, dx, dy in u:
                n_cls = len(self.classes) - 1
                cls = self._class_id(self.params.anomaly_type) if self.params.anomaly_type else 1 + min(int(a * n_cls), n_cls - 1)
                bw = st["w_min"] + b * (st["w_max"] - st["w_min"])
                bh = st["h_min"] + c * (st["h_max"] - st["h_min"])
                x1, y1 = dx * (1 - bw), dy * (1 - bh)
                boxes.append((self.classes[cls], round(x1, 4), round(y1, 4), round(x1 + bw, 4), round(y1 + bh, 4)))
            out.append({"boxes": boxes})
        return out

    def _class_id(self, name: str) -> int:
        if name not in self.classes[1:]:
            raise ValueError(f"anomaly_type {name!r} was not fitted; known: {self.classes[1:]}")
        return self.classes.index(name)

    def _check_boxes(self, boxes: Sequence[Sequence[Any]], where: str) -> list[list[tuple[str, float, float, float, float]]]:
        """Boxes with fitted classes, as ``(class name, x1, y1, x2, y2)``; errors name ``where[i]``.

        A :class:`ConditionError` for ``conditions.boxes``, a ``ValueError`` for replayed records.
        """
        known = self.classes[1:]
        error = ConditionError if where.startswith("conditions") else ValueError
        out = []
        for i, bx in enumerate(boxes):
            row = []
            for b in bx:
                if not isinstance(b, (tuple, list)) or len(b) != 5:
                    raise error(f"{where}[{i}]: each box is (label, x1, y1, x2, y2), got {b!r}")
                label = b[0]
                if isinstance(label, str):
                    if label not in known:
                        raise error(f"{where}[{i}]: label {label!r} was not fitted; known: {known}")
                    name = label
                elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 1 <= int(label) <= len(known):
                    name = self.classes[int(label)]
                else:
                    raise error(f"{where}[{i}]: label {label!r} is neither a fitted class name nor an id "
                                f"1..{len(known)}; known: {known}")
                x1, y1, x2, y2 = (float(v) for v in b[1:])
                if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
                    raise error(f"{where}[{i}]: {b!r} needs 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
                row.append((name, x1, y1, x2, y2))
            out.append(row)
        return out

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Boxes from ``conditions.boxes``, else the replayed records, else drawn; then DDPM on image + class bits.

        :meth:`sample` runs first in every case, so each rng reaches its noise where the
        original call did: a replay gives the same bytes, and edited boxes change only the
        condition. Replayed records and ``conditions.boxes`` must agree when both are given.
        """
        from anoplug.diffusion.sampling import sample

        drawn = self.sample(batch, rngs)  # advances every rng to where its noise starts
        boxes = [s["boxes"] for s in drawn]
        if samples is not None:
            for i, rec in enumerate(samples):
                if not isinstance(rec, dict) or not isinstance(rec.get("boxes"), (list, tuple)):
                    raise ValueError(f"samples[{i}] must be a record {{'boxes': [(label, x1, y1, x2, y2), ...]}}, "
                                     f"got {rec!r}")
            boxes = self._check_boxes([rec["boxes"] for rec in samples], "samples")
        if batch.conditions.boxes is not None:
            asked = self._check_boxes(batch.conditions.boxes, "conditions.boxes")
            for i, (a, r) in enumerate(zip(asked, boxes)):
                if samples is not None and a != r:
                    raise ConditionError(f"conditions.boxes[{i}] {a!r} differs from the replayed samples[{i}]['boxes'] "
                                         f"{r!r}; give one of them")
            boxes = asked
        records = Samples({"boxes": bx} for bx in boxes)
        h, w = batch.size
        s = self.size
        ids_of = [[(self.classes.index(b[0]), *b[1:]) for b in bx] for bx in boxes]
        cond = self.condition(ids_of, s, s).to(self.device)
        sched = make_ddpm(self.params.train_steps)
        shape = (len(batch), 3 + self.bits, s, s)

        def model(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return self.unet(torch.cat([x, c], 1), t).sample  # the condition maps join the input channels

        x = sample(model, sched, shape=shape, rngs=rngs, num_steps=self.params.sample_steps, cond=cond, device=self.device)
        image = ((x[:, :3] + 1) / 2).clamp(0, 1)
        ids = from_bits(x[:, 3:], len(self.classes)).float()
        if (h, w) != (s, s):
            image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
            ids = F.interpolate(ids, size=(h, w), mode="nearest")
        mask = (ids > 0).float()
        labels = []
        for i in range(len(batch)):
            present = ids[i][ids[i] > 0].long()
            labels.append(self.classes[int(present.bincount().argmax())] if present.numel() else GOOD)
        out = Batch(image=image.float().contiguous(), mask=mask, label=labels, meta=[dict(m) for m in batch.meta],
                    extras={"class_map": ids})
        return out, records
