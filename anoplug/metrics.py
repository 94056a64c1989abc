"""Detection metrics with the conventions of the synthetic-anomaly literature.

The numbers papers report depend on small conventions (how ties count, how the image
score is pooled, how a resized ground truth is binarised, how PRO is sampled), so each
is explicit here and documented in ``docs/evaluation.md``:

- AUROC / AP are scikit-learn's (``roc_auc_score``, ``average_precision_score``), as anomalib
  computes them: ties form one threshold; AP is the step-wise sum ``sum_k (R_k - R_{k-1}) P_k``,
  not an interpolated area.
- F1-max is the maximum of ``2PR/(P+R)`` over the exact PR curve; the coarse
  AnomalyDiffusion variant (thresholds 0, 0.05, ..., 1) is :func:`f1_max_grid`.
- The image score is the max of the anomaly map after a 21x21 mean filter (stride 1,
  zero "same" padding counted in the mean, as ``avg_pool2d`` does in DRAEM's code).
- AU-PRO@0.3 follows the MVTec 3D-AD evaluation code: 8-connected ground-truth
  components, 100 thresholds at equally spaced positions of the sorted *normal*-pixel
  scores, PRO = mean per-component overlap, trapezoid of PRO over FPR up to 0.3
  (interpolated at the limit), divided by 0.3.

AU-PRO stays ours because its convention differs from anomalib's (which integrates the exact
per-threshold curve): ours follows MVTec 3D-AD's 100 thresholds; with ``num_thresholds=1000`` it
equals anomalib's ``AUPRO`` to 1e-4 (tested). Inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "roc_curve", "auroc", "pr_curve", "average_precision", "f1_max", "f1_max_grid",
    "image_scores", "connected_components", "pro_curve", "au_pro", "binarize_resized_mask",
    "detection_metrics", "detector_report", "DETECTION_METRICS",
]

#: name -> one-line description of every metric :func:`detection_metrics` returns (all higher-is-better).
DETECTION_METRICS: dict[str, str] = {
    "image_auroc": "image AUROC, image score = max of the 21x21 mean-filtered anomaly map",
    "image_ap": "image average precision (step-wise, as sklearn)",
    "image_f1max": "max F1 over the exact image PR curve",
    "pixel_auroc": "pixel AUROC pooled over all test pixels",
    "pixel_ap": "pixel average precision pooled over all test pixels",
    "pixel_f1max": "max F1 over the pooled pixel PR curve (exact; see f1_max_grid for the 0.05 grid)",
    "au_pro": "area under the PRO curve up to FPR 0.3, normalised by 0.3 (8-connected components, 100 thresholds)",
}


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _np(scores).ravel()
    y = _np(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1 (binarise soft masks first)")
    return s, y


def _both_classes(y: np.ndarray, what: str) -> None:
    if y.size == 0 or y.min() == y.max():
        raise ValueError(f"{what} needs both positive and negative samples")


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) starting at (0, 0): scikit-learn's, with every threshold kept."""
    from sklearn.metrics import roc_curve as sk_roc

    s, y = _scores_labels(scores, labels)
    _both_classes(y, "ROC")
    fpr, tpr, thr = sk_roc(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve: scikit-learn's ``roc_auc_score`` (ties count one half), anomalib's choice."""
    from sklearn.metrics import roc_auc_score

    s, y = _scores_labels(scores, labels)
    _both_classes(y, "ROC")
    return float(roc_auc_score(y, s))


def pr_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), highest threshold first, one point per distinct score (scikit-learn's
    curve without its appended (1, 0) end point)."""
    from sklearn.metrics import precision_recall_curve

    s, y = _scores_labels(scores, labels)
    _both_classes(y, "PR curve")
    precision, recall, thr = precision_recall_curve(y, s, drop_intermediate=False)
    return precision[-2::-1], recall[-2::-1], thr[::-1]


def average_precision(scores: Any, labels: Any) -> float:
    """Step-wise AP = sum_k (R_k - R_{k-1}) P_k: scikit-learn's ``average_precision_score``."""
    from sklearn.metrics import average_precision_score

    s, y = _scores_labels(scores, labels)
    _both_classes(y, "PR curve")
    return float(average_precision_score(y, s))


def f1_max(scores: Any, labels: Any) -> float:
    """Maximum F1 over every distinct threshold of the PR curve."""
    precision, recall, _ = pr_curve(scores, labels)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


def f1_max_grid(scores: Any, labels: Any, thresholds: Any = None) -> float:
    """AnomalyDiffusion's coarse pixel F1-max: thresholds 0, 0.05, ..., 1, a pixel is positive if score >= t."""
    s, y = _scores_labels(scores, labels)
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("F1 needs both positive and negative samples")
    t = np.linspace(0.0, 1.0, 21) if thresholds is None else _np(thresholds).ravel()
    # Count per threshold through one sort instead of len(t) passes over the pixels.
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    first = np.searchsorted(s_sorted, t, side="left")  # predicted positive = indices >= first
    pos_above = np.r_[np.cumsum(y_sorted[::-1])[::-1], 0.0]
    tp = pos_above[first]
    pred = s.size - first
    p = np.where(pred > 0, tp / np.maximum(pred, 1), 0.0)
    r = tp / max(y.sum(), 1.0)
    f1 = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    return float(f1.max())


def image_scores(anomaly_maps: Any, filter_size: int = 21) -> np.ndarray:
    """Per-image score: max of the anomaly map after a ``filter_size``² mean filter (zero padding counted)."""
    import torch
    import torch.nn.functional as F

    maps = anomaly_maps if isinstance(anomaly_maps, torch.Tensor) else torch.as_tensor(np.asarray(anomaly_maps))
    maps = maps.detach().float().cpu()
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"anomaly maps must be [B,H,W] or [B,1,H,W], got {tuple(maps.shape)}")
    if filter_size > 1:
        maps = F.avg_pool2d(maps, filter_size, stride=1, padding=filter_size // 2)
    return maps.flatten(1).amax(1).double().numpy()


def connected_components(masks: Any) -> tuple[np.ndarray, int]:
    """8-connected labels of a stack of binary masks [B,H,W] (components never span images)."""
    m = _np(masks, np.float64) > 0
    if m.ndim == 4:
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 3x3 in-plane: 8-connectivity, nothing across the batch axis
    labels, n = ndimage.label(m, structure=structure)
    return labels, int(n)


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area of y(x) for x <= x_max, linearly interpolating y at x_max (x ascending)."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    inside = x <= x_max
    area = float(np.trapezoid(y[inside], x[inside])) if inside.sum() > 1 else 0.0
    if x_max not in x[inside] and inside.any() and (~inside).any():
        i = int(np.argmax(~inside))  # first point beyond the limit
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


def pro_curve(anomaly_maps: Any, gt_masks: Any, num_thresholds: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) in ascending FPR order, sampled as the MVTec 3D-AD code does."""
    maps = _np(anomaly_maps)
    gts = _np(gt_masks)
    if maps.ndim == 4:
        maps = maps[:, 0]
    if gts.ndim == 4:
        gts = gts[:, 0]
    if maps.shape != gts.shape:
        raise ValueError(f"anomaly maps {maps.shape} and ground truth {gts.shape} differ in shape")
    labels, n_comp = connected_components(gts)
    normal = np.sort(maps[labels == 0])
    if n_comp == 0 or normal.size == 0:
        raise ValueError("PRO needs at least one anomalous region and some normal pixels")
    positions = np.linspace(0, normal.size - 1, num=num_thresholds).astype(int)
    thresholds = normal[positions]
    fpr = 1.0 - (positions + 1) / normal.size
    # Per-component overlap at every threshold: fraction of the component's pixels scoring above it.
    comp = labels[labels > 0]
    comp_scores = maps[labels > 0]
    order = np.lexsort((comp_scores, comp))
    comp, comp_scores = comp[order], comp_scores[order]
    starts = np.searchsorted(comp, np.arange(1, n_comp + 1), side="left")
    sizes = np.diff(np.r_[starts, comp.size])
    # Shift each component's scores into its own band so one searchsorted covers all components.
    base = min(comp_scores.min(), thresholds.min())
    span = float(max(comp_scores.max(), thresholds.max()) - base) + 1.0
    shifted = (comp_scores - base) + (comp - 1) * span
    queries = (thresholds[None, :] - base) + (np.arange(n_comp)[:, None] * span)
    at_or_below = np.searchsorted(shifted, queries, side="right") - starts[:, None]
    overlap = 1.0 - at_or_below / sizes[:, None]
    pro = overlap.mean(axis=0)
    fprs = np.r_[1.0, fpr][::-1]
    pros = np.r_[1.0, pro][::-1]
    return fprs, pros


def au_pro(anomaly_maps: Any, gt_masks: Any, integration_limit: float = 0.3, num_thresholds: int = 100) -> float:
    """Area under the PRO curve up to ``integration_limit`` FPR, divided by the limit (1 = perfect)."""
    fprs, pros = pro_curve(anomaly_maps, gt_masks, num_thresholds)
    return _trapezoid_up_to(fprs, pros, integration_limit) / integration_limit


def binarize_resized_mask(mask: Any, size: tuple[int, int] | int) -> np.ndarray:
    """Resize ground truth the AnomalyDiffusion way: bilinear, then keep only pixels that stay exactly 1.

    The official code divides the bilinear result by 255 and casts to uint8, so soft boundary
    pixels become negatives; reproduce that here (input [B,1,H,W] or [B,H,W] in {0,1}).
    """
    import torch
    import torch.nn.functional as F

    size = (size, size) if isinstance(size, int) else tuple(size)
    m = torch.as_tensor(_np(mask, np.float32))
    if m.ndim == 3:
        m = m[:, None]
    u8 = (m * 255).round()
    out = F.interpolate(u8, size=size, mode="bilinear", align_corners=False)
    return (torch.floor(out.round() / 255.0) >= 1).float().numpy()


def detection_metrics(anomaly_maps: Any, gt_masks: Any, image_labels: Any = None, *, filter_size: int = 21,
                      pro_limit: float = 0.3, pro_thresholds: int = 100, pixel_f1: str = "exact") -> dict[str, float]:
    """All seven detection metrics of :data:`DETECTION_METRICS` for one category's test set.

    ``anomaly_maps`` [B,1,H,W] (or [B,H,W]) are per-pixel scores, ``gt_masks`` binary masks of the
    same shape; ``image_labels`` (1 = anomalous) default to "mask has any positive pixel".
    Metrics that are undefined (e.g. no anomalous image) come back as NaN rather than raising.
    ``pixel_f1="grid"`` uses AnomalyDiffusion's thresholds 0, 0.05, ..., 1 (scores in [0, 1]).
    """
    maps = _np(anomaly_maps)
    gts = _np(gt_masks)
    if maps.ndim == 3:
        maps = maps[:, None]
    if gts.ndim == 3:
        gts = gts[:, None]
    if maps.shape != gts.shape:
        raise ValueError(f"anomaly maps {maps.shape} and ground truth {gts.shape} differ in shape")
    gts = (gts >= 0.5).astype(np.float64)
    labels = gts.reshape(len(gts), -1).max(1) if image_labels is None else _np(image_labels).ravel()
    img = image_scores(maps, filter_size)

    def safe(fn: Any, *a: Any, **k: Any) -> float:
        try:
            return float(fn(*a, **k))
        except ValueError:
            return float("nan")

    return {
        "image_auroc": safe(auroc, img, labels),
        "image_ap": safe(average_precision, img, labels),
        "image_f1max": safe(f1_max, img, labels),
        "pixel_auroc": safe(auroc, maps, gts),
        "pixel_ap": safe(average_precision, maps, gts),
        "pixel_f1max": safe(f1_max_grid, maps, gts) if pixel_f1 == "grid" else safe(f1_max, maps, gts),
        "au_pro": safe(au_pro, maps, gts, integration_limit=pro_limit, num_thresholds=pro_thresholds),
    }


def detector_report(maps: Any, image_scores_head: Any, test: Any) -> dict[str, float]:
    """:func:`detection_metrics` of a detector on a labelled test ``Batch``, plus the image
    AUROC/AP of its own image score (``*_head``), as SuperSimpleNet and PBAS report them."""
    labels = np.array([float(lab != "good") for lab in test.label])
    out = detection_metrics(maps, test.mask, labels)
    out["image_auroc_head"] = float(auroc(image_scores_head, labels))
    out["image_ap_head"] = float(average_precision(image_scores_head, labels))
    return out
