"""Fidelity: KID over a *named* feature extractor, and IS only with a user-supplied Inception.

The papers compute KID/IS on Inception-v3 whose weights are a download; offline we name the
extractor in the metric (``kid@efficientnet-lite0``, ``kid@vgg16conv``), so a number is never
mistaken for the Inception one. KID is the unbiased MMD² with the cubic polynomial kernel
``k(x, y) = (x·y / d + 1)^3`` averaged over ``subsets`` random subsets of size ``m`` — raw
units (papers sometimes print ×10³; SeaS prints raw).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from anoplug.evaluator import Evaluator, Metric, Report
from anoplug.params import Params
from anoplug.types import GOOD, Batch

__all__ = ["kid", "extract_features", "KID", "InceptionScore", "inception_score"]


def kid(real: np.ndarray | torch.Tensor, gen: np.ndarray | torch.Tensor, *, subset_size: int = 1000, subsets: int = 100,
        seed: int = 2020) -> tuple[float, float, int]:
    """(mean, std, m): unbiased polynomial-kernel MMD² over random subsets, m = min(subset_size, n_real, n_gen)."""
    x = np.asarray(real.detach().cpu() if isinstance(real, torch.Tensor) else real, dtype=np.float64)
    y = np.asarray(gen.detach().cpu() if isinstance(gen, torch.Tensor) else gen, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two [n, d] feature sets of the same d, got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {len(x)} real and {len(y)} generated")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for s in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        vals[s] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                   - 2 * kxy.mean())
    return float(vals.mean()), float(vals.std()), m


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _inception(weights: str) -> torch.nn.Module:
    """torchvision Inception-v3 with weights from a local state dict (safetensors, or torch file read weights-only).

    ``transform_input=True`` as torchvision sets it for its ImageNet weights (ported from the
    Google checkpoint, which expects inputs in [-1, 1]): the model takes ImageNet-normalised
    input and maps it back to (x - 0.5) / 0.5 itself. ``weights=None`` alone leaves it False,
    and the network would then see ImageNet-normalised values it was never trained on.
    """
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    model.load_state_dict(_load_tensors(Path(weights)))
    return model.eval()


def _inception_input(x: torch.Tensor) -> torch.Tensor:
    """[0,1] images -> 299² ImageNet-normalised input, as torchvision's Inception-v3 weights expect."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    return (F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - mean) / std


def extract_features(images: torch.Tensor, extractor: str, *, resize: int = 224, chunk: int = 16,
                     inception_weights: str = "") -> tuple[torch.Tensor, str]:
    """Global-average-pooled features and the extractor's name as it should appear in a metric name."""
    x = images.float()
    if resize and x.shape[-1] != resize:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    if extractor == "vgg16conv":
        from anoplug_metrics.lpips import LpipsWeightsMissing, load_lpips, random_lpips

        try:
            model, label = load_lpips("vgg16"), "vgg16conv"
        except LpipsWeightsMissing:
            model, label = random_lpips("vgg16"), "random-vgg16conv-substitute"
        fn = lambda t: model.features(t)[-1].mean((2, 3))  # relu5_3, 512-d  # noqa: E731
    elif extractor == "efficientnet-lite0":
        from anoplug.backbones import BackboneWeightsMissing, get_backbone

        try:
            bb, label = get_backbone("efficientnet-lite0"), "efficientnet-lite0"
        except (BackboneWeightsMissing, ImportError):
            bb, label = get_backbone("efficientnet-lite0", pretrained=False), "random-efficientnet-lite0-substitute"
        fn = lambda t: bb(t, ["stage7"])["stage7"].mean((2, 3))  # noqa: E731
    elif extractor == "inception":
        if not inception_weights:
            raise FileNotFoundError("extractor 'inception' needs inception_weights= a local Inception-v3 state dict")
        net = _inception(inception_weights)
        net.fc = torch.nn.Identity()
        fn = lambda t: net(_inception_input(t))  # noqa: E731
        label = "torchvision-inception-v3-pool3"  # torchvision's port, not the 2015 TF graph of FID/KID papers
    else:
        raise ValueError(f"unknown feature extractor {extractor!r}")
    with torch.no_grad():
        feats = torch.cat([fn(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else torch.zeros(0, 1)
    return feats, label


class KIDParams(Params):
    extractor: Literal["efficientnet-lite0", "vgg16conv", "inception"] = Field(
        "efficientnet-lite0", description="feature extractor; 'inception' needs inception_weights (not shipped)")
    inception_weights: str = Field("", description="path to a torchvision Inception-v3 state dict (only for 'inception')")
    subset_size: int = Field(1000, ge=2, le=100000, description="subset size m (lowered to the smaller set's size)")
    subsets: int = Field(100, ge=1, le=10000, description="number of random subsets S")
    resize: int = Field(224, ge=0, le=1024, description="side images are resized to before the extractor (0 = keep)")
    anomalous_only: bool = Field(True, description="compare only anomalous samples (label != good) of both sets")
    seed: int = Field(2020, ge=0, le=2**31 - 1, description="subset sampling seed (torch-fidelity uses 2020)")


class KID(Evaluator):
    """Kernel Inception Distance between generated and real defect images (lower = closer)."""

    name = "kid"
    title = "KID fidelity"
    Params = KIDParams

    def evaluate(self, generated: Batch, *, normals: Batch | None = None, real: Batch | None = None) -> Report:
        if real is None:
            raise ValueError("kid needs `real` images to compare against")
        p = self.params

        def pick(b: Batch) -> Batch:
            idx = [i for i, lab in enumerate(b.label) if lab != GOOD] if p.anomalous_only else []
            return b[idx] if idx else b

        fr, label = extract_features(pick(real).image, p.extractor, resize=p.resize, inception_weights=p.inception_weights)
        fg, _ = extract_features(pick(generated).image, p.extractor, resize=p.resize, inception_weights=p.inception_weights)
        mean, std, m = kid(fr, fg, subset_size=p.subset_size, subsets=p.subsets, seed=p.seed)
        desc = (f"KID (raw units, not x1e3) over {label} global-average-pooled features ({fr.shape[1]}-d), "
                f"{p.subsets} subsets of m={m} (requested {p.subset_size}), unbiased MMD^2 with (x.y/d+1)^3"
                + ("; SUBSTITUTE extractor with random weights" if "substitute" in label else ""))
        return Report(self.name, {f"kid@{label}": Metric(mean, False, desc, std)},
                      details={"subset_size_used": m, "n_real": len(fr), "n_generated": len(fg), "extractor": label})


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split; (mean, std) over ``splits``."""
    p = np.asarray(probs, dtype=np.float64)
    scores = []
    for part in np.array_split(p, splits):
        if len(part) == 0:
            continue
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


class ISParams(Params):
    inception_weights: str = Field("", description="path to a torchvision Inception-v3 state dict; empty = unavailable")
    splits: int = Field(10, ge=1, le=100, description="number of splits (torch-fidelity default 10)")


class InceptionScore(Evaluator):
    """Inception Score, only with user-supplied Inception weights; otherwise reported unavailable (NaN)."""

    name = "inception-score"
    title = "Inception Score"
    Params = ISParams

    def evaluate(self, generated: Batch, *, normals: Batch | None = None, real: Batch | None = None) -> Report:
        if not self.params.inception_weights:
            return Report(self.name, {"is": Metric(float("nan"), True, "unavailable: no Inception-v3 weights supplied "
                                                   "(set inception_weights=PATH); no offline substitute is faithful")},
                          details={"available": False})
        net = _inception(self.params.inception_weights)
        with torch.no_grad():
            x = generated.image
            logits = torch.cat([net(_inception_input(x[i:i + 16])) for i in range(0, len(x), 16)])
        probs = logits.double().softmax(1).numpy()
        m, s = inception_score(probs, self.params.splits)
        desc = f"IS over {self.params.splits} splits, torchvision Inception-v3 (1000 classes), not the TF graph"
        return Report(self.name, {"is@torchvision-inception-v3": Metric(m, True, desc, s)}, details={"available": True})
