"""Downstream utility: do these synthetic anomalies teach a detector to find *real* defects?

Protocol (AnomalyDiffusion's ``train-localization``, the ASBench U-Net pipeline): train DRAEM's
discriminative U-Net from scratch on real normal images and the generated anomalies (each
training sample is synthetic with probability ``anomaly_prob``, 0.5 = the 50/50 mix), then
score the held-out real test set: image AUROC / AP / F1-max (image score = max of the
21x21-mean-filtered map), pixel AUROC / AP / F1-max and AU-PRO@0.3 (``anoplug.metrics``).

A U-Net trained on normal images alone is already a novelty detector (on the embedded toy
data it reaches image AUROC ~0.8 without a single anomaly), so "chance" is not 0.5. With
``baseline=True`` the same detector (same seed, steps, sizes) is also trained with *no*
synthetic anomalies, and every metric gets a ``*_gain`` twin: what the anomalies added. A
generator that returns its input unchanged scores a gain of about zero.

Checkpoint selection never looks at the test set unless ``selection="best_on_test"`` is set
on purpose — that flag replicates the official scripts, which keep the epoch with the best
*test* score and so inflate every number they report.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from anoplug.evaluator import Evaluator, Metric, Report
from anoplug.metrics import DETECTION_METRICS, binarize_resized_mask, detection_metrics
from anoplug.params import Params
from anoplug.types import GOOD, Batch
from anoplug_metrics.detector import predict_maps, train_detector

__all__ = ["DownstreamUtility", "UtilityParams"]

_BASELINES: OrderedDict[str, dict] = OrderedDict()  # no-anomaly detector results, shared across generators
_MAX_BASELINES = 16


class UtilityParams(Params):
    steps: int = Field(12500, ge=1, le=1_000_000,
                       description="training steps (paper: 200 epochs x 500 samples / batch 8 = 12,500)")
    batch_size: int = Field(8, ge=1, le=256, description="training batch size (paper 8)")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="Adam learning rate; x0.2 at 80 % and 90 % of the steps")
    base_width: int = Field(64, ge=2, le=128, description="U-Net base width (DRAEM: 64; CPU runs use 8)")
    size: int = Field(256, ge=32, le=1024, description="side training and test images are resized to (multiple of 32)")
    anomaly_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability a training sample is a synthetic anomaly")
    focal_gamma: float = Field(2.0, ge=0.0, le=10.0, description="focal loss gamma")
    selection: Literal["last", "best_on_test"] = Field(
        "last", description="checkpoint: last step, or (replication only, inflates results) the best on the test set")
    eval_every: int = Field(0, ge=0, le=1_000_000, description="test evaluations for best_on_test (0 = every steps/10)")
    pixel_f1: Literal["grid", "exact"] = Field("grid", description="pixel F1-max on AnomalyDiffusion's 0.05 grid or exact")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of weight init and training sampling")
    baseline: bool = Field(True, description="also train on normals only and report each metric's gain over that detector")
    device: str = Field("cpu", description="torch device for training")

    @field_validator("size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError("size must be a multiple of 32 (the U-Net pools five times)")
        return v


class DownstreamUtility(Evaluator):
    """Train a detector on normals + ``generated`` anomalies; test on ``real`` (held-out real defects and goods)."""

    name = "downstream-utility"
    title = "Downstream utility (DRAEM U-Net on real defects)"
    Params = UtilityParams

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.params.size
        return x if x.shape[-1] == s and x.shape[-2] == s else F.interpolate(x, size=(s, s), mode="bilinear",
                                                                             align_corners=False)

    def _test_set(self, real: Batch) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        s = self.params.size
        images = self._resize(real.image)
        if real.mask.shape[-1] == s and real.mask.shape[-2] == s:
            gts = (real.mask >= 0.5).float().numpy()
        else:
            gts = binarize_resized_mask(real.mask, s)
        labels = np.array([lab != GOOD for lab in real.label], dtype=np.float64)
        return images, gts, labels

    def evaluate(self, generated: Batch, *, normals: Batch | None = None, real: Batch | None = None) -> Report:
        p = self.params
        if normals is None or len(normals) == 0:
            raise ValueError("downstream-utility needs `normals`: the real normal training images")
        if real is None or len(real) == 0:
            raise ValueError("downstream-utility needs `real`: the held-out real test set (goods and defects)")
        test_images, gts, labels = self._test_set(real)
        if labels.sum() == 0 or labels.sum() == len(labels):
            raise ValueError("downstream-utility: the real test set needs both good and defective images")
        chosen, chosen_step, info = self._run(normals, generated, test_images, gts, labels, p.anomaly_prob)
        note = " [selected on the TEST set: inflated, replication only]" if p.selection == "best_on_test" else ""
        metrics = {k: Metric(float(chosen[k]), True, DETECTION_METRICS[k]
                             + (" (0.05 threshold grid)" if k == "pixel_f1max" and p.pixel_f1 == "grid" else "") + note)
                   for k in DETECTION_METRICS}
        details = {**info, "selected_step": chosen_step, "n_normals": len(normals), "n_generated": len(generated),
                   "n_test": len(real), "n_test_defective": int(labels.sum()),
                   "detector": f"DRAEM DiscriminativeSubNetwork, base width {p.base_width}, {p.size}px, from scratch"}
        if p.baseline:
            base = self._baseline(normals, real, test_images, gts, labels)
            for k in DETECTION_METRICS:
                metrics[f"{k}_gain"] = Metric(float(chosen[k] - base["metrics"][k]), True,
                                              f"{k} minus the same detector trained on normals only (no synthetic anomalies)")
            details["baseline"] = base
        return Report(self.name, metrics, details=details)

    def _run(self, normals: Batch, generated: Batch, test_images: torch.Tensor, gts: np.ndarray, labels: np.ndarray,
             anomaly_prob: float) -> tuple[dict, int, dict]:
        """Train one detector and score it: (metrics, selected step, details)."""
        p = self.params
        t0 = time.perf_counter()
        history: list[dict] = []
        best: dict = {}

        def on_eval(step: int, model: torch.nn.Module) -> None:
            m = detection_metrics(predict_maps(model, test_images, device=p.device).numpy(), gts, labels, pixel_f1=p.pixel_f1)
            history.append({"step": step, **m})
            key = m["image_auroc"] + m["pixel_ap"]  # the DRAEM script's criterion
            if not best or key > best["key"]:
                best.update(key=key, step=step, metrics=m)

        model, losses = train_detector(
            self._resize(normals.image), self._resize(generated.image), self._resize_mask(generated.mask),
            steps=p.steps, batch_size=p.batch_size, lr=p.lr, base_width=p.base_width, anomaly_prob=anomaly_prob,
            gamma=p.focal_gamma, seed=p.seed, device=p.device,
            callback=on_eval if p.selection == "best_on_test" else None,
            eval_every=(p.eval_every or max(p.steps // 10, 1)) if p.selection == "best_on_test" else 0)
        train_s = time.perf_counter() - t0
        final = detection_metrics(predict_maps(model, test_images, device=p.device).numpy(), gts, labels, pixel_f1=p.pixel_f1)
        chosen, chosen_step = final, p.steps
        if p.selection == "best_on_test":
            if not history or history[-1]["step"] != p.steps:
                on_eval(p.steps, model)
            chosen, chosen_step = best["metrics"], best["step"]
        info = {"train_seconds": train_s, "steps": p.steps, "selection": p.selection, "history": history,
                "loss_first": losses[0] if losses else None,
                "loss_last": float(np.mean(losses[-20:])) if losses else None}
        return chosen, chosen_step, info

    def _baseline(self, normals: Batch, real: Batch, test_images: torch.Tensor, gts: np.ndarray, labels: np.ndarray) -> dict:
        """The no-anomaly detector's metrics, computed once per (normals, test set, settings) in this process."""
        h = hashlib.sha1()
        for t in (normals.image, real.image, real.mask):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        settings = self.params.model_dump(exclude={"anomaly_prob", "baseline", "device"})
        h.update(json.dumps(settings, sort_keys=True).encode())
        key = h.hexdigest()
        if key not in _BASELINES:
            empty = Batch(image=normals.image[:0], mask=torch.zeros(0, 1, *normals.image.shape[-2:]), label=[])
            chosen, step, info = self._run(normals, empty, test_images, gts, labels, 0.0)
            _BASELINES[key] = {"metrics": chosen, "selected_step": step, "train_seconds": info["train_seconds"]}
            while len(_BASELINES) > _MAX_BASELINES:
                _BASELINES.popitem(last=False)
        _BASELINES.move_to_end(key)
        return _BASELINES[key]

    def _resize_mask(self, mask: torch.Tensor) -> torch.Tensor:
        s = self.params.size
        if mask.shape[-1] == s and mask.shape[-2] == s:
            return (mask >= 0.5).float()
        return (F.interpolate(mask.float(), size=(s, s), mode="bilinear", align_corners=False) >= 0.5).float()
