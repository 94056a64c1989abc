"""AnoGen's weakly supervised segmentation loss (Gui, Gao et al., ECCV 2024): boxes as labels.

AnoGen's generated anomalies are labelled by the box they were drawn in, and most of a box is
normal texture. Supervising every box pixel as "anomalous" would teach the detector to flag
normal texture, so the official DRAEM training (``DRAEM/train_DRAEM.py`` of gaobb/AnoGen) masks
the per-pixel segmentation loss:

    loss_mask = (p_anomalous > p_cutoff) OR (pixel outside the label mask)

with ``p_anomalous`` the detector's own (detached) softmax probability of the anomaly class.
Inside a box, a pixel is supervised only once the detector already finds it anomalous; outside
every box (and on every normal image, whose mask is empty) all pixels are supervised. The
official rule is applied to every sample of the batch, exact masks included, and the mean runs
over all pixels (masked ones count as zero). p_cutoff is 0.1 for DRAEM (``train.sh``) and 0 for
DeSTSeg. The DRAEM pipeline of this plugin takes it as ``weak_p_cutoff`` (``None`` = off).
"""

from __future__ import annotations

import torch

__all__ = ["weak_loss_mask", "focal_loss_map", "weak_focal_loss"]


def weak_loss_mask(prob: torch.Tensor, label: torch.Tensor, p_cutoff: float) -> torch.Tensor:
    """``[B,1,H,W]`` in {0, 1}: supervise a pixel when its anomaly probability exceeds ``p_cutoff`` or it lies outside ``label``.

    ``prob`` is the anomaly-class probability ``[B,1,H,W]`` (detached here: the mask selects pixels, it is not trained).
    """
    return ((prob.detach() > p_cutoff) | (label < 0.5)).float()


def focal_loss_map(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Per-pixel DRAEM focal loss ``[B,1,H,W]`` (the map whose mean is ``anoplug_metrics.detector.focal_loss``)."""
    prob = logits.softmax(1)
    one_hot = torch.cat([1 - target, target], 1).clamp(smooth, 1.0 - smooth)
    pt = (one_hot * prob).sum(1, keepdim=True) + smooth
    return -(1 - pt).pow(gamma) * pt.log()


def weak_focal_loss(logits: torch.Tensor, label: torch.Tensor, gamma: float, p_cutoff: float) -> torch.Tensor:
    """The focal loss under :func:`weak_loss_mask`, averaged over all pixels (as the official ``(loss * mask).mean()``)."""
    prob = logits.softmax(1)[:, 1:]
    return (focal_loss_map(logits, label, gamma) * weak_loss_mask(prob, label, p_cutoff)).mean()
