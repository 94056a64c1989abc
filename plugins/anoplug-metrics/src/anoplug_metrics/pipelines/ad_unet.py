"""``ad-unet``: AnomalyDiffusion's localisation U-Net (ASBench's fourth pipeline).

This is DRAEM's discriminative sub-network alone, trained from scratch on the image (3 channels,
no reconstruction) with DRAEM's focal loss: the detector ``downstream-utility`` has always used.
It wraps :func:`anoplug_metrics.detector.train_detector` unchanged, so its numbers are those of
the evaluator before pipelines existed, bit for bit (tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from anoplug_metrics.detector import DiscriminativeUNet, train_detector
from anoplug_metrics.pipelines._common import Callback, Detector, SyntheticSet, max_mean_filtered

__all__ = ["Config", "ADUNetDetector", "train"]


@dataclass(frozen=True)
class Config:
    """Official values: AnomalyDiffusion ``train-localization.py`` / DRAEM's schedule (see the README)."""

    steps: int = 12_500  # 200 epochs x 500 samples / batch 8
    batch_size: int = 8
    size: int = 256
    anomaly_prob: float = 0.5
    lr: float = 1e-4
    base_width: int = 64
    focal_gamma: float = 2.0

    #: the CPU scale (the bench's profile since before pipelines existed)
    CPU: ClassVar[dict[str, Any]] = {"steps": 300, "base_width": 8, "lr": 1e-3, "size": 128}


class ADUNetDetector(Detector):
    """Softmax channel 1 of the U-Net; image score = max of the 21x21 mean-filtered map (DRAEM's)."""

    name = "ad-unet"

    def __init__(self, model: DiscriminativeUNet, size: int, config: dict[str, Any]) -> None:
        super().__init__(size, config)
        self.model = model

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).softmax(1)[:, 1:]

    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        return max_mean_filtered(maps)


def train(normals: torch.Tensor, synthetic: SyntheticSet, cfg: Config, *, seed: int, device: str = "cpu",
          callback: Callback | None = None, eval_every: int = 0) -> ADUNetDetector:
    """``train_detector`` with ``cfg``; ``callback(step, detector)`` every ``eval_every`` updates."""
    holder: dict[str, ADUNetDetector] = {}

    def on_eval(step: int, model: torch.nn.Module) -> None:
        if "det" not in holder:
            holder["det"] = ADUNetDetector(model, cfg.size, asdict(cfg))
        callback(step, holder["det"])

    model, losses = train_detector(normals, synthetic.images, synthetic.masks, steps=cfg.steps,
                                   batch_size=cfg.batch_size, lr=cfg.lr, base_width=cfg.base_width,
                                   anomaly_prob=cfg.anomaly_prob, gamma=cfg.focal_gamma, seed=seed, device=device,
                                   callback=on_eval if callback is not None else None, eval_every=eval_every)
    det = holder.get("det") or ADUNetDetector(model, cfg.size, asdict(cfg))
    det.history = [{"loss": v} for v in losses]
    return det
