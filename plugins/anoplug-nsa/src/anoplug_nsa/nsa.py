"""Natural Synthetic Anomalies (Schlüter, Tan, Hou, Kainz — ECCV 2022), step by step as ``patch_ex``.

Per image, with a *source* image (another normal image of the same class):
1. Object masks (optional): given with the batch, else the class's brightness heuristic
   |mean_c − b| > t followed by a 7×7 median (MVTec objects only).
2. Patches i = 0..n−1: the first always, each later one with probability ½.
3. Half-widths per axis: (0.03 + Gamma(2, 0.05)) × side, clipped to the class bounds.
4. Source centre uniform; with object masks, at most 200 tries for a box that is more
   than ``min_object_pct`` object.
5. Resize by s = clip(N(1, 0.5), lo, hi) keeping the aspect (the half-width bounds clip the
   full size, as in the official code); bilinear.
6. Destination centre uniform with the patch inside; with object masks, at most 200 tries
   until the patch's object overlaps the destination's object by ``min_overlap_pct``.
7. Patch mask ∧ (source object ∨ destination object); Poisson-blend (source gradients for
   objects, mixed gradients for textures) with the mask extended into shared background.
8. Label: union of patch masks ∧ (mean |Δ| > 1 grey level), 5×5 median; soft label
   label / (1 + exp(−k (L − x0))) with L the disk-median of the change.
Images are processed as 8-bit grey levels like the original (OpenCV on uint8).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from anoplug.conditions import ConditionError
from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import Params
from anoplug.types import GOOD, Batch
from anoplug_nsa import presets
from anoplug_nsa.labels import binary_median, nsa_labels
from anoplug_nsa.poisson import CloneJob, seamless_clone

TRIES = 200  # rejection-sampling attempts for source and destination (official value)
MIN_MASK_PIXELS = 50  # smaller clone masks are skipped (OpenCV fails on them, the official code skips)
LABEL = "nsa"


class NSAParams(Params):
    category: str = Field("auto", min_length=1, description=(
        "class preset: an MVTec AD class, a toy category, 'object', 'texture', or 'auto' "
        "(the batch's meta['category'], else object/texture by whether object masks are given)"))
    clone: Literal["preset", "normal", "mixed"] = Field(
        "preset", description="Poisson guidance: source gradients (normal), mixed, or the class preset")
    num_patches: int = Field(0, ge=0, le=10, description="maximum patches per image (0 = the class preset: 3 or 4)")
    soft_label: bool = Field(True, description="also return the logistic soft label in extras['soft_mask']")
    source: Literal["auto", "batch", "self"] = Field("auto", description=(
        "source image: 'auto' = conditions.source_image if given, else another image of the batch; "
        "'batch' = another image of the batch; 'self' = the image itself"))
    object_aware: bool = Field(True, description="use object masks (given, or the class heuristic) to place patches")
    resize: bool = Field(True, description="randomly rescale the patch before blending")
    gamma_shape: int = Field(2, ge=1, le=10, description="half-width = offset + Gamma(shape, scale) of the side")
    gamma_scale: float = Field(0.05, gt=0.0, le=0.5, description="scale of the half-width Gamma law")
    gamma_offset: float = Field(0.03, ge=0.0, le=0.5, description="offset of the half-width law (fraction of the side)")
    tol: float = Field(1.0, ge=0.0, le=255.0, description="grey levels a pixel must change to be labelled anomalous")


@dataclass
class _Context:
    """Per-call data shared by sampling and applying: object masks, presets, 8-bit images."""

    batch: Batch
    source_paired: bool
    dest_obj: list[torch.Tensor | None]  # per image [H,W] bool
    source_obj: list[torch.Tensor | None]  # per source image
    presets: list[tuple[str, presets.Preset]]
    _levels: tuple[torch.Tensor, torch.Tensor] | None = None
    _integrals: dict = field(default_factory=dict)

    def integral(self, j: int) -> torch.Tensor:
        """Summed-area table of source object mask ``j`` (box sums in O(1) for rejection sampling)."""
        if j not in self._integrals:
            self._integrals[j] = F.pad(self.source_obj[j].double().cumsum(0).cumsum(1), (1, 0, 1, 0))
        return self._integrals[j]

    def levels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(destination, source) images in grey levels, computed on first use (sampling needs none)."""
        if self._levels is None:
            dest = _to_levels(self.batch.image)
            src = _to_levels(self.batch.conditions.source_image) if self.source_paired else dest
            self._levels = (dest, src)
        return self._levels


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round_()  # a validated batch is already in [0, 1]


def _heuristic_object(levels: torch.Tensor, background: tuple[float, float]) -> torch.Tensor:
    """NSA's MVTec object mask: far enough from the background brightness, then a 7×7 median."""
    b, t = background
    raw = ((levels.mean(1, keepdim=True) - b).abs() > t).float()
    return binary_median(raw, 7)[:, 0].bool()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[C,h,w]`` (OpenCV INTER_LINEAR: half-pixel centres, no antialiasing)."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


_COEF = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: bilinear weights are 11-bit fixed point for 8-bit images


def _cv_axis(n_src: int, n_dst: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's INTER_LINEAR taps along one axis: indices and integer weights (each rounded to 1/2048)."""
    f = ((torch.arange(n_dst, dtype=torch.float64) + 0.5) * (n_src / n_dst) - 0.5).float()
    s = f.floor()
    f = f - s
    low, high = s < 0, s >= n_src - 1
    f = torch.where(low | high, torch.zeros_like(f), f)
    s = torch.where(low, torch.zeros_like(s), torch.where(high, torch.full_like(s, n_src - 1), s)).long()
    i1 = torch.where(high, s, s + 1).clamp(max=n_src - 1)
    return s, i1, torch.round((1 - f) * _COEF).long(), torch.round(f * _COEF).long()


def _resize_u8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(..., INTER_LINEAR)`` of 8-bit values (or a 0/1 mask) ``[C,h,w]``, exactly, as floats.

    OpenCV sums 11-bit fixed-point weights and rounds half *up*, so a mask pixel interpolated to
    0.5 is 1 (torch's ``round`` goes to even and made it 0, which dropped object pixels at the edges
    of thin objects and about three times as many patches as the official code). The vertical pass
    is OpenCV's vectorised one, ``((S0>>4)·b0>>16) + ((S1>>4)·b1>>16) + 2 >> 2`` (its scalar tail
    rounds exactly and differs by 1 on < 2 % of pixels). An exact 2x reduction on both axes is
    OpenCV's area average, as ``cv2.resize`` switches to it.
    """
    (h, w), (nh, nw) = x.shape[-2:], size
    if (h, w) == (nh, nw):
        return x
    v = x.round().long()
    if h == 2 * nh and w == 2 * nw:
        return ((v[..., 0::2, 0::2] + v[..., 1::2, 0::2] + v[..., 0::2, 1::2] + v[..., 1::2, 1::2] + 2) >> 2).to(x.dtype)
    y0, y1, b0, b1 = _cv_axis(h, nh)
    x0, x1, a0, a1 = _cv_axis(w, nw)
    rows = v[..., x0] * a0 + v[..., x1] * a1  # horizontal pass, kept at scale 2048 as OpenCV's int buffer
    top = ((rows[..., y0, :] >> 4) * b0[:, None]) >> 16
    bottom = ((rows[..., y1, :] >> 4) * b1[:, None]) >> 16
    return ((top + bottom + 2) >> 2).to(x.dtype)


def _randint(rng: torch.Generator, lo: int, hi: int, n: int = 1) -> torch.Tensor:
    """Uniform integers in [lo, hi) (numpy's randint convention); ``hi <= lo`` gives ``lo``."""
    u = torch.rand(n, generator=rng, dtype=torch.float64)
    return lo + (u * max(hi - lo, 1)).long()


def _gamma(rng: torch.Generator, shape: int, scale: float) -> float:
    """Gamma with integer shape as a sum of exponentials (torch's gamma sampler takes no generator)."""
    u = torch.rand(shape, generator=rng, dtype=torch.float64)
    return float(-scale * torch.log1p(-u).sum())


class NSA(Generator):
    name = "nsa"
    title = "NSA: Poisson-blended patches from another normal image"
    category = "cutpaste"
    tags = ("poisson", "self-supervised", "mask")
    paper = Paper("Natural Synthetic Anomalies for Self-Supervised Anomaly Detection and Localization",
                  venue="ECCV", year=2022, url="https://arxiv.org/abs/2109.15222",
                  code_url="https://github.com/hmsch/natural-synthetic-anomalies")
    Params = NSAParams
    #: the writer, bench and explorer pass the paired normal as conditions.source_image: chunking-independent
    requires = Requires(accepts=("source_image", "source_object_mask"))

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        if self.params.source != "auto":  # 'self' and 'batch' read no paired source: refuse one, never ignore it
            self.requires = Requires()

    # -- context ------------------------------------------------------------------------------
    def _context(self, batch: Batch) -> _Context:
        p = self.params
        paired = p.source == "auto" and batch.conditions.source_image is not None  # shape checked by the Batch
        has_obj = batch.object_mask is not None
        names = [p.category if p.category != "auto" else str((m or {}).get("category", "auto")) for m in batch.meta]
        chosen = [presets.resolve(n, has_obj) for n in names]
        ctx = _Context(batch, paired, [None] * len(batch), [None] * len(batch), chosen)
        if not p.object_aware:
            return ctx
        if has_obj:
            ctx.dest_obj = list(batch.object_mask[:, 0].bool())
            src_masks = batch.conditions.source_object_mask if paired else batch.object_mask
            ctx.source_obj = list(src_masks[:, 0].bool()) if src_masks is not None else list(ctx.dest_obj)
        elif any(pr.background is not None for _, pr in chosen):  # MVTec brightness heuristic
            dest, src = ctx.levels()
            for i, (_, pr) in enumerate(chosen):
                if pr.background is not None:
                    ctx.dest_obj[i] = _heuristic_object(dest[i:i + 1], pr.background)[0]
                    ctx.source_obj[i] = _heuristic_object(src[i:i + 1], pr.background)[0] if paired else ctx.dest_obj[i]
        return ctx

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        return self._sample(batch, rngs, self._context(batch))

    def _source_index(self, i: int, n: int, rng: torch.Generator, ctx: _Context) -> int:
        u = float(torch.rand(1, generator=rng, dtype=torch.float64))  # always drawn: fixed draw count
        if ctx.source_paired or self.params.source == "self" or n == 1:
            return i
        return (i + 1 + int(u * (n - 1))) % n  # another image of the batch

    def _sample(self, batch: Batch, rngs: Sequence[torch.Generator], ctx: _Context) -> Samples:
        p = self.params
        if len(batch) == 1 and not ctx.source_paired and p.source != "self":
            # NSA pastes from *another* normal image; with one image and no paired source, the only
            # candidate is the image itself, which is a different method (source="self")
            raise ConditionError(f"{self.name}: a batch of one image has no other image to take patches from: "
                                 "pass conditions.source_image (the drivers pair one), a larger batch, or "
                                 "source='self' to paste from the image itself")
        H, W = batch.size
        out = Samples()
        for i, rng in enumerate(rngs):
            name, preset = ctx.presets[i]
            j = self._source_index(i, len(batch), rng, ctx)
            d_obj, s_obj = ctx.dest_obj[i], ctx.source_obj[j]
            use_obj = d_obj is not None and s_obj is not None
            n = p.num_patches or preset.num_patches
            patches, n_drawn = [], 0
            for k in range(n):
                present = k == 0 or int(_randint(rng, 0, 2)) > 0
                n_drawn += present
                patches.append(self._sample_patch(rng, (H, W), preset, d_obj if use_obj else None,
                                                  s_obj if use_obj else None, ctx.integral(j) if use_obj else None)
                               if present else None)
            clone = preset.clone if p.clone == "preset" else p.clone
            # a batch-mate's position only when the source *is* a batch-mate: paired and self sources are the
            # sample's own, so the record stays valid in any batch (replay)
            mate = j if j != i else None
            out.append({"preset": name, "source_index": mate, "source": "paired" if ctx.source_paired else "batch",
                        "clone": clone, "logistic": list(preset.logistic), "n_drawn": n_drawn, "patches": patches})
        return out

    def _sample_patch(self, rng: torch.Generator, size: tuple[int, int], preset: presets.Preset,
                      d_obj: torch.Tensor | None, s_obj: torch.Tensor | None, integral: torch.Tensor | None) -> dict | None:
        p = self.params
        H, W = size
        (h_lo, h_hi), (w_lo, w_hi) = preset.width_bounds
        min1, max1 = round(h_lo * H), round(h_hi * H)
        min2, max2 = round(w_lo * W), round(w_hi * W)
        draw = [p.gamma_offset + _gamma(rng, p.gamma_shape, p.gamma_scale) for _ in range(2)]
        half1 = int(min(max(draw[0] * H, min1), max1))
        half2 = int(min(max(draw[1] * W, min2), max2))
        # source box: centre uniform, box clipped at the border (it may be truncated)
        tries = TRIES if s_obj is not None else 1
        c1, c2 = _randint(rng, min1, H - min1, tries), _randint(rng, min2, W - min2, tries)
        y0, y1 = (c1 - half1).clamp(0, H), (c1 + half1).clamp(0, H)
        x0, x1 = (c2 - half2).clamp(0, W), (c2 + half2).clamp(0, W)
        if integral is not None:
            inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            ok = inside / ((y1 - y0) * (x1 - x0)).clamp(min=1) > preset.min_object_pct
            if not bool(ok.any()):
                return None
            t = int(ok.nonzero()[0])
        else:
            t = 0
        box = [int(y0[t]), int(y1[t]), int(x0[t]), int(x1[t])]
        h, w = box[1] - box[0], box[3] - box[2]
        if h < 1 or w < 1:
            return None
        scale_draw = float(torch.randn(1, generator=rng, dtype=torch.float64)) * 0.5 + 1.0  # N(1, 0.5)
        scale = scale_draw
        if p.resize:
            lo, hi = preset.resize_bounds
            scale = min(max(scale, lo), hi)
            new_h = min(max(scale * h, min1), max1)
            new_w = int(min(max(int(new_h / h * w), min2), max2))
            new_h = int(min(max(int(new_w / w * h), min1), max1))
        else:
            new_h, new_w = h, w
        if new_h < 3 or new_w < 3 or new_h + 2 >= H or new_w + 2 >= W:
            return None
        # destination: the patch fits entirely
        tries = TRIES if d_obj is not None else 1
        d1 = _randint(rng, new_h // 2 + 1, H - new_h // 2 - 1, tries)
        d2 = _randint(rng, new_w // 2 + 1, W - new_w // 2 - 1, tries)
        t = 0
        if d_obj is not None:
            s_patch = _resize_u8(s_obj[box[0]:box[1], box[2]:box[3]][None].float(), (new_h, new_w))[0]
            s_area = float(s_patch.sum())
            if not s_area / (new_h * new_w) > preset.min_object_pct:
                return None
            t = self._first_overlap(d_obj, s_patch, s_area, d1 - new_h // 2, d2 - new_w // 2, preset.min_overlap_pct)
            if t is None:
                return None
        dy0, dx0 = int(d1[t]) - new_h // 2, int(d2[t]) - new_w // 2
        return {"src_box": box, "size": [new_h, new_w], "dst_box": [dy0, dy0 + new_h, dx0, dx0 + new_w],
                "scale": scale, "scale_draw": scale_draw, "half_widths": [half1, half2], "half_draw": draw}

    @staticmethod
    def _first_overlap(d_obj: torch.Tensor, s_patch: torch.Tensor, s_area: float, ys: torch.Tensor, xs: torch.Tensor,
                       min_overlap: float) -> int | None:
        """Index of the first candidate top-left whose destination object covers the patch's object enough."""
        h, w = s_patch.shape
        rows, cols = torch.arange(h), torch.arange(w)
        start = 0
        for chunk in (1, 7, 24, 168):  # most objects accept the first try; evaluate lazily
            ys_c, xs_c = ys[start:start + chunk], xs[start:start + chunk]
            if ys_c.numel() == 0:
                break
            win = d_obj[(ys_c[:, None] + rows)[:, :, None], (xs_c[:, None] + cols)[:, None, :]]  # [K,h,w]
            overlap = (win.float() * s_patch).flatten(1).sum(1) / max(s_area, 1.0)
            ok = (overlap > min_overlap).nonzero()
            if ok.numel():
                return start + int(ok[0])
            start += chunk
        return None

    # -- applying -----------------------------------------------------------------------------
    def apply(self, batch: Batch, samples: Samples) -> Batch:
        return self._apply(batch, samples, self._context(batch))

    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Sampling and applying share one context (object masks, 8-bit images), built once."""
        ctx = self._context(batch)
        if samples is None:
            samples = self._sample(batch, rngs, ctx)
        return self._apply(batch, samples, ctx), samples

    def _apply(self, batch: Batch, samples: list[dict], ctx: _Context) -> Batch:
        dest, _ = ctx.levels()
        current = dest.clone()
        union = torch.zeros(len(batch), 1, *batch.size, dtype=current.dtype, device=current.device)
        boxes: list[tuple[int, int, int, int, int]] = []  # (image, y0, y1, x0, x1) of every blended patch
        steps = max((len(s["patches"]) for s in samples), default=0)
        for k in range(steps):  # patch k of every image at once; an image's patches stay sequential
            jobs, mixed, updates = [], [], []
            for i, s in enumerate(samples):
                patch = s["patches"][k] if k < len(s["patches"]) else None
                if patch is None:
                    continue
                job, patch_mask = self._clone_job(i, s, patch, ctx)
                if job is None:
                    continue
                jobs.append(job)
                mixed.append(s["clone"] == "mixed")
                updates.append((i, patch["dst_box"], patch_mask))
            if not jobs:
                continue
            done = seamless_clone(current, jobs, mixed)
            for ok, (i, (y0, y1, x0, x1), patch_mask) in zip(done, updates):
                if ok:
                    union[i, 0, y0:y1, x0:x1] = patch_mask.to(union.dtype)  # assignment, as the official code
                    boxes.append((i, y0, y1, x0, x1))
        # only the blended boxes changed: compute the change map and the output there
        change = torch.zeros_like(union)
        image = batch.image.clone()
        for i, y0, y1, x0, x1 in boxes:
            before, after = dest[i, :, y0:y1, x0:x1], current[i, :, y0:y1, x0:x1]
            change[i, 0, y0:y1, x0:x1] = (before - after).abs().mean(0)
            image[i, :, y0:y1, x0:x1] = torch.where(after != before, after / 255.0, batch.image[i, :, y0:y1, x0:x1])
        logistic = torch.tensor([s["logistic"] for s in samples], dtype=current.dtype) if self.params.soft_label else None
        label, soft = nsa_labels(change, union, self.params.tol, logistic)

        out = copy.copy(batch)  # shallow: keeps object_mask/depth/text without re-validating the input
        out.image, out.mask = image, label
        out.label = [LABEL if bool(a) else GOOD for a in (label.flatten(1).amax(1) > 0).tolist()]
        out.meta = [dict(m) for m in batch.meta]
        out.extras = dict(batch.extras)
        if soft is not None:
            out.extras["soft_mask"] = soft
        return out

    def _clone_job(self, i: int, s: dict, patch: dict, ctx: _Context) -> tuple[CloneJob | None, torch.Tensor]:
        j = i if s["source_index"] is None else s["source_index"]
        y0, y1, x0, x1 = patch["src_box"]
        nh, nw = patch["size"]
        dy0, dy1, dx0, dx1 = patch["dst_box"]
        src = _resize_u8(ctx.levels()[1][j, :, y0:y1, x0:x1], (nh, nw)).clamp(0, 255)
        patch_mask = torch.ones(nh, nw, dtype=torch.bool, device=src.device)
        d_obj, s_obj = ctx.dest_obj[i], ctx.source_obj[j]
        clone_mask = patch_mask
        if d_obj is not None and s_obj is not None:
            s_patch = _resize_u8(s_obj[y0:y1, x0:x1][None].float(), (nh, nw))[0].bool()
            d_win = d_obj[dy0:dy1, dx0:dx1]
            patch_mask = patch_mask & (s_patch | d_win)
            clone_mask = patch_mask | (~s_patch & ~d_win)  # extend into shared background against seams
        clone_mask = clone_mask.clone()
        clone_mask[0, :] = clone_mask[-1, :] = False
        clone_mask[:, 0] = clone_mask[:, -1] = False
        if int(clone_mask.sum()) < MIN_MASK_PIXELS:
            return None, patch_mask
        center = (dx1 - nw // 2, dy0 + nh // 2)  # (x, y), as NSA passes it to OpenCV
        return CloneJob(i, src, clone_mask, center), patch_mask
