"""EID-GAN's evaluation protocol: two outlier detectors and k-fold cross-validation judge generated instances.

The paper argues that accuracy, clustering and FID cannot tell whether a generated image of
an extremely imbalanced class is *usable* (FID rates images without the tiny outlier well), and
proposes instead (Fabric: Faster R-CNN, training:test 0.6:0.4, three folds):

1. detector A is trained on the real training part and scored on the real test part;
2. A screens the generated instances: only those in which it detects an outlier are kept
   (Fabric: 60 of 100 EID-GAN instances) — the *availability* of the generator;
3. detector B is trained on the real training part plus the kept instances and scored on the
   same test part; Error-Escape, False-Alarm and F1 of A and B are compared, per fold.

Here the detector is small (our substitute for Faster R-CNN, image level instead of boxes):
``"knn"`` (1-nearest neighbour) or ``"linear"`` (a class-balanced ridge least-squares probe,
solved in closed form), both on :func:`outlier_features` — per-channel quantiles of the local
deviation |x − mean₅ₓ₅(x)|, which react to a few deviating pixels wherever they are.
Error-Escape = missed defective images / defective images, False-Alarm = normal images flagged
/ normal images, F1 of the defective class (our definitions; the paper's formulas are not
available to us).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["outlier_features", "NearestNeighbour", "LinearProbe", "detection_scores", "availability_protocol",
           "stratified_folds"]

Detector = Literal["knn", "linear"]
QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)


def outlier_features(images: torch.Tensor, size: int = 64) -> torch.Tensor:
    """``[N, 3·(len(QUANTILES) + 2)]``: per channel, quantiles of |x − 5×5 mean| plus the channel mean and std."""
    x = images.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    local = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    dev = (x - local).abs().flatten(2)  # [N, 3, HW]
    q = torch.quantile(dev, torch.tensor(QUANTILES, dtype=dev.dtype), dim=2).permute(1, 2, 0).flatten(1)
    flat = x.flatten(2)
    return torch.cat([q, flat.mean(2), flat.std(2)], 1)


class _Standardised:
    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.sd

    def _fit_scale(self, x: torch.Tensor) -> torch.Tensor:
        self.mu, self.sd = x.mean(0), x.std(0).clamp_min(1e-6)
        return self._standardise(x)


class NearestNeighbour(_Standardised):
    """1-NN on standardised features: a sample takes the label of its nearest training sample."""

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> NearestNeighbour:
        self.x, self.y = self._fit_scale(x.double()), y.long()
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(self._standardise(x.double()), self.x)
        return self.y[d.argmin(1)]


class LinearProbe(_Standardised):
    """Ridge least squares on targets ±1 with class-balanced sample weights, solved in closed form."""

    def __init__(self, ridge: float = 1.0) -> None:
        self.ridge = ridge

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> LinearProbe:
        z = self._fit_scale(x.double())
        a = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
        t = y.double() * 2 - 1
        n_pos, n_neg = float((y == 1).sum()), float((y == 0).sum())
        w = torch.where(y == 1, 0.5 / max(n_pos, 1.0), 0.5 / max(n_neg, 1.0)).double() * len(y)
        reg = self.ridge * torch.eye(a.shape[1], dtype=a.dtype)
        reg[-1, -1] = 0  # the bias is not shrunk
        self.w = torch.linalg.solve(a.T @ (w[:, None] * a) + reg, a.T @ (w * t))
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = self._standardise(x.double())
        return ((z @ self.w[:-1] + self.w[-1]) > 0).long()


def _detector(kind: Detector) -> NearestNeighbour | LinearProbe:
    if kind == "knn":
        return NearestNeighbour()
    if kind == "linear":
        return LinearProbe()
    raise ValueError(f"unknown detector {kind!r}; choose 'knn' or 'linear'")


def detection_scores(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Error-Escape (missed defects / defects), False-Alarm (flagged normals / normals), F1 of the defect class."""
    tp = int(((pred == 1) & (truth == 1)).sum())
    fn = int(((pred == 0) & (truth == 1)).sum())
    fp = int(((pred == 1) & (truth == 0)).sum())
    n_def, n_norm = int((truth == 1).sum()), int((truth == 0).sum())
    return {"error_escape": fn / n_def if n_def else math.nan, "false_alarm": fp / n_norm if n_norm else math.nan,
            "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan}


def stratified_folds(y: torch.Tensor, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``k`` disjoint test-index sets, each class shuffled (from ``generator``) and dealt round-robin."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in (0, 1):
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < k:
            raise ValueError(f"class {c} has {len(idx)} samples, fewer than k={k} folds")
        for j, i in enumerate(idx[torch.randperm(len(idx), generator=generator)].tolist()):
            folds[j % k].append(i)
    return [torch.tensor(sorted(f)) for f in folds]


def _mean_std(rows: Sequence[dict[str, float]], key: str) -> tuple[float, float]:
    v = torch.tensor([r[key] for r in rows], dtype=torch.float64)
    v = v[torch.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std()) if len(v) > 1 else 0.0


def availability_protocol(normals: torch.Tensor, defects: torch.Tensor, generated: torch.Tensor, *,
                          detector: Detector = "knn", k: int = 3, seed: int = 0, size: int = 64) -> dict:
    """Run the protocol (module docstring) on real ``normals``, real ``defects`` and ``generated`` instances.

    All are image tensors ``[N, 3, H, W]`` in [0, 1]. Returns, averaged over the ``k`` folds (with
    the standard deviation across folds): ``availability`` (fraction of generated instances
    detector A flags), ``baseline`` (A's scores) and ``augmented`` (B's scores), plus the per-fold rows.
    """
    x = torch.cat([outlier_features(normals, size), outlier_features(defects, size)])
    y = torch.cat([torch.zeros(len(normals), dtype=torch.long), torch.ones(len(defects), dtype=torch.long)])
    xg = outlier_features(generated, size)
    folds = stratified_folds(y, k, torch.Generator().manual_seed(seed))
    rows = []
    for test in folds:
        train = torch.tensor([i for i in range(len(y)) if i not in set(test.tolist())])
        a = _detector(detector).fit(x[train], y[train])
        kept = a.predict(xg) == 1
        base = detection_scores(a.predict(x[test]), y[test])
        b = _detector(detector).fit(torch.cat([x[train], xg[kept]]),
                                    torch.cat([y[train], torch.ones(int(kept.sum()), dtype=torch.long)]))
        aug = detection_scores(b.predict(x[test]), y[test])
        rows.append({"availability": float(kept.float().mean()), "kept": int(kept.sum()),
                     **{f"baseline_{m}": v for m, v in base.items()}, **{f"augmented_{m}": v for m, v in aug.items()}})
    out: dict = {"detector": detector, "k": k, "seed": seed, "n_normals": len(normals), "n_defects": len(defects),
                 "n_generated": len(generated), "folds": rows}
    for key in rows[0]:
        if key != "kept":
            out[key], out[f"{key}_std"] = _mean_std(rows, key)
    return out
