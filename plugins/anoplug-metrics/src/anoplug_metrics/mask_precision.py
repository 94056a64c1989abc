"""Mask precision: does the returned mask say exactly where the image changed?

The survey's "precise mask" category is judged by this: a generator whose mask is loose
(paints outside it) teaches a detector to miss defect pixels; one whose mask is too large
(covers unchanged pixels) teaches it to flag normal texture. Comparing each generated image
with the normal image it was made from gives, per sample and per set:

- ``leakage``: fraction of pixels *outside* the mask that changed (lower is better);
- ``leakage_mae``: mean absolute change outside the mask, in [0, 1] intensity units;
- ``coverage``: fraction of mask pixels that changed (higher is better);
- ``change_iou``: IoU between the changed region and the mask;
- ``boundary_f1``: F1 of the two regions' boundaries matched within ``boundary_tolerance`` pixels.

A pixel "changed" when any channel moved by more than ``change_threshold``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from anoplug.evaluator import Evaluator, Metric, Report
from anoplug.params import Params
from anoplug.types import Batch

__all__ = ["MaskPrecision", "mask_precision"]


def _boundary(region: torch.Tensor) -> torch.Tensor:
    """Pixels of a binary [B,1,H,W] region with a 4-neighbour outside it."""
    eroded = -F.max_pool2d(-region, 3, stride=1, padding=1)
    return (region - eroded).clamp(0, 1)


def _dilate(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(x, 2 * r + 1, stride=1, padding=r) if r > 0 else x


def mask_precision(generated: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, *, change_threshold: float = 2 / 255,
                   boundary_tolerance: int = 2) -> dict[str, torch.Tensor]:
    """Per-sample tensors [B] of the five quantities (NaN where undefined, e.g. coverage of an empty mask)."""
    if generated.shape != source.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and source {tuple(source.shape)} images differ in shape")
    m = (mask >= 0.5).float()
    diff = (generated - source).abs()
    changed = (diff.amax(1, keepdim=True) > change_threshold).float()
    out_px = (1 - m).sum((1, 2, 3))
    in_px = m.sum((1, 2, 3))
    nan = torch.tensor(float("nan"))
    leakage = torch.where(out_px > 0, (changed * (1 - m)).sum((1, 2, 3)) / out_px.clamp(min=1), nan)
    leakage_mae = torch.where(out_px > 0, (diff.mean(1, keepdim=True) * (1 - m)).sum((1, 2, 3)) / out_px.clamp(min=1), nan)
    coverage = torch.where(in_px > 0, (changed * m).sum((1, 2, 3)) / in_px.clamp(min=1), nan)
    union = ((changed + m) > 0).float().sum((1, 2, 3))
    iou = torch.where(union > 0, (changed * m).sum((1, 2, 3)) / union.clamp(min=1), nan)
    bm, bc = _boundary(m), _boundary(changed)
    prec_hits = (bc * _dilate(bm, boundary_tolerance)).sum((1, 2, 3))
    rec_hits = (bm * _dilate(bc, boundary_tolerance)).sum((1, 2, 3))
    precision = prec_hits / bc.sum((1, 2, 3)).clamp(min=1)
    recall = rec_hits / bm.sum((1, 2, 3)).clamp(min=1)
    bf1 = torch.where((bm.sum((1, 2, 3)) > 0) & (precision + recall > 0),
                      2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros(()))
    bf1 = torch.where(bm.sum((1, 2, 3)) > 0, bf1, nan)
    return {"leakage": leakage, "leakage_mae": leakage_mae, "coverage": coverage, "change_iou": iou, "boundary_f1": bf1}


_DIRECTION = {"leakage": False, "leakage_mae": False, "coverage": True, "change_iou": True, "boundary_f1": True}
_DESC = {
    "leakage": "fraction of pixels outside the mask that changed",
    "leakage_mae": "mean absolute change outside the mask ([0,1] units)",
    "coverage": "fraction of mask pixels that changed",
    "change_iou": "IoU of the changed region and the mask",
    "boundary_f1": "boundary F1 between changed region and mask",
}


class MaskPrecisionParams(Params):
    change_threshold: float = Field(2 / 255, ge=0.0, le=1.0, description="a pixel changed if a channel moved by more than this")
    boundary_tolerance: int = Field(2, ge=0, le=32, description="pixels of slack when matching boundaries")


class MaskPrecision(Evaluator):
    """Compares each generated image with its source normal (``normals``, same order) inside and outside its mask."""

    name = "mask-precision"
    title = "Mask precision (leakage, coverage, boundary)"
    Params = MaskPrecisionParams
    needs_masks = True  # the masks are the labels: a mask-less method's empty mask would read as "no defect"

    def evaluate(self, generated: Batch, *, normals: Batch | None = None, real: Batch | None = None) -> Report:
        if normals is None:
            raise ValueError("mask-precision needs `normals`: the source image of each generated sample, in the same order")
        if len(normals) != len(generated):
            raise ValueError(f"mask-precision: {len(generated)} generated samples but {len(normals)} source normals; "
                             "pass the images they were generated from, one per sample")
        per = mask_precision(generated.image, normals.image, generated.mask, change_threshold=self.params.change_threshold,
                             boundary_tolerance=self.params.boundary_tolerance)
        anomalous = generated.mask.flatten(1).amax(1) >= 0.5
        metrics = {}
        for k, v in per.items():
            sel = v[anomalous] if bool(anomalous.any()) else v
            finite = sel[torch.isfinite(sel)]
            val = float(finite.mean()) if len(finite) else float("nan")
            std = float(finite.std()) if len(finite) > 1 else None
            metrics[k] = Metric(val, _DIRECTION[k], _DESC[k] + f" (mean over {len(finite)} anomalous samples; "
                                f"changed = any channel moved > {self.params.change_threshold:.4f})", std)
        details = {"per_sample": {k: [None if not np.isfinite(x) else float(x) for x in v.tolist()] for k, v in per.items()}}
        return Report(self.name, metrics, details=details)
