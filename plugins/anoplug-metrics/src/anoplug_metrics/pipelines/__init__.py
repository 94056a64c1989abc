"""ASBench's four detection pipelines behind one interface.

ASBench (arXiv 2510.07927) judges a synthesiser by what it teaches *different* detectors, so the
same pre-generated anomalies train each of:

======== ==================================================================== ===================
name     what                                                                 official code
======== ==================================================================== ===================
ad-unet  AnomalyDiffusion's localisation U-Net (DRAEM's discriminative U-Net) anomalydiffusion
draem    DRAEM: reconstructive + discriminative sub-networks, L2 + SSIM + focal VitjanZ/DRAEM
destseg  DeSTSeg: frozen teacher, denoising student, segmentation network      apple/ml-destseg
memseg   MemSeg: memory bank of normal features, difference + attention fusion TooTouch/MemSeg
======== ==================================================================== ===================

``train_pipeline(name, normals, synthetic, ...)`` returns a :class:`Detector` whose
``predict(images)`` gives ``(maps [B,1,H,W] in [0,1], image scores [B])``. Each pipeline's
defaults are its official schedule (``scale="official"``); ``scale="cpu"`` is the same code with
fewer steps, narrower layers and smaller images. Every optimisation loop runs on
:class:`anoplug.train.Trainer`; every random draw comes from ``seed``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Literal

import torch

from anoplug_metrics.pipelines._common import Callback, Detector, SyntheticSet, match_sources, resize_images

__all__ = ["PIPELINES", "PipelineSpec", "Detector", "SyntheticSet", "train_pipeline", "resolve_config",
           "pipeline_config_class", "match_sources"]

Scale = Literal["official", "cpu"]


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline: its module (``Config``, ``train``), a title, and whether it needs the clean images."""

    name: str
    module: str
    title: str
    needs_clean: bool


#: the registry: name -> spec (``set(PIPELINES) == {"ad-unet", "draem", "destseg", "memseg"}``)
PIPELINES: dict[str, PipelineSpec] = {
    "ad-unet": PipelineSpec("ad-unet", "anoplug_metrics.pipelines.ad_unet",
                            "AnomalyDiffusion localisation U-Net (DRAEM discriminative U-Net)", False),
    "draem": PipelineSpec("draem", "anoplug_metrics.pipelines.draem",
                          "DRAEM reconstructive + discriminative sub-networks", True),
    "destseg": PipelineSpec("destseg", "anoplug_metrics.pipelines.destseg",
                            "DeSTSeg denoising student-teacher + segmentation network", True),
    "memseg": PipelineSpec("memseg", "anoplug_metrics.pipelines.memseg",
                           "MemSeg memory bank + multi-scale fusion + U-Net decoder", False),
}


def _spec(name: str) -> PipelineSpec:
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    return PIPELINES[name]


def _module(name: str) -> Any:
    return importlib.import_module(_spec(name).module)


def pipeline_config_class(name: str) -> type:
    """The frozen ``Config`` dataclass of pipeline ``name`` (its field defaults are the official values)."""
    return _module(name).Config


def resolve_config(name: str, scale: Scale = "official", **overrides: Any) -> Any:
    """The pipeline's ``Config``: official defaults, then the ``cpu`` scale if asked, then ``overrides``.

    ``None`` overrides are ignored (so callers can pass optional settings straight through); an
    unknown key is an error naming the pipeline's fields.
    """
    if scale not in ("official", "cpu"):
        raise ValueError(f"scale must be 'official' or 'cpu', got {scale!r}")
    cls = pipeline_config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"pipeline {name!r} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(fields))}")
    values = dict(cls.CPU) if scale == "cpu" else {}
    values.update(given)
    return cls(**values)


def train_pipeline(name: str, normals: torch.Tensor, synthetic: SyntheticSet | None = None, *,
                   steps: int | None = None, seed: int = 0, size: int | None = None, scale: Scale = "official",
                   batch_size: int | None = None, anomaly_prob: float | None = None, device: str = "cpu",
                   callback: Callback | None = None, eval_every: int = 0, **settings: Any) -> Detector:
    """Train pipeline ``name`` on real ``normals`` [N,3,H,W] and pre-generated ``synthetic`` anomalies.

    ``steps``, ``size``, ``batch_size``, ``anomaly_prob`` and any pipeline ``settings`` (e.g.
    ``lr``, ``base_width``, ``backbone``) override the ``scale``'s values; None keeps them. Images
    are resized to ``size`` (bilinear; masks re-binarised at 0.5). ``callback(step, detector)``
    runs after every ``eval_every``-th update (opt-in checkpoint selection). The global RNG is
    neither used nor advanced.
    """
    spec = _spec(name)
    cfg = resolve_config(name, scale, steps=steps, size=size, batch_size=batch_size, anomaly_prob=anomaly_prob,
                         **settings)
    if cfg.size % 32:
        raise ValueError(f"pipeline {name!r}: size must be a multiple of 32, got {cfg.size}")
    normals = resize_images(normals, cfg.size)
    synthetic = SyntheticSet.empty(normals) if synthetic is None else synthetic.resized(cfg.size)
    if spec.needs_clean and len(synthetic) and synthetic.clean is None:
        raise ValueError(f"pipeline {name!r} needs the clean image of every synthetic anomaly "
                         "(SyntheticSet(clean=...); match_sources finds them among the normals)")
    return _module(name).train(normals, synthetic, cfg, seed=seed, device=device, callback=callback,
                               eval_every=eval_every)

