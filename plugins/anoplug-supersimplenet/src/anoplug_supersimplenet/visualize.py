"""Seeing feature-level anomalies: there is no anomalous image, so show what the features and the detector do.

:func:`feature_anomalies` perturbs the adapted features of some images exactly as training
does (one copy per image, mask never emptied, so every row shows an anomaly) and returns, at
image size: the synthetic mask, the size of the perturbation, a PCA view of the features
before/after (same basis) and the detector's anomaly map before/after.
:func:`plot_feature_anomalies` draws that as a grid.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from anoplug.backbones import pca_rgb
from anoplug.seeding import resolve_seeds, rngs_for
from anoplug.types import Batch

__all__ = ["feature_anomalies", "plot_feature_anomalies"]


@torch.no_grad()
def feature_anomalies(model: Any, images: Batch | torch.Tensor, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Before/after views of SuperSimpleNet's feature-level anomalies for ``images``.

    Returns tensors at the images' size: ``image`` [B,3,H,W], ``mask`` [B,1,H,W] (synthetic,
    nearest-upsampled), ``delta`` [B,1,H,W] (‖Δfeature‖ per position), ``pca_before`` /
    ``pca_after`` [B,3,H,W] (first 3 principal components of the clean features, both
    projected on that basis), ``map_before`` / ``map_after`` [B,1,H,W] (sigmoid of the
    segmentation head), and ``score_before`` / ``score_after`` [B].
    """
    x = images.image if isinstance(images, Batch) else images
    size = x.shape[-2:]
    clean = model.adapt(model.features(x))
    rngs = rngs_for(resolve_seeds(len(x), seed=seed))
    noisy, mask, _, _ = model.synthesize(clean, rngs, duplicate=False, empty_probability=0.0)
    map_b, score_b = model.head(clean)
    map_a, score_a = model.head(noisy)

    def up(t: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        kw = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(t.float(), size=size, mode=mode, **kw).cpu()

    return {"image": x.cpu(), "mask": up(mask, "nearest"), "delta": up((noisy - clean).norm(dim=1, keepdim=True), "nearest"),
            "pca_before": up(pca_rgb(clean), "nearest"), "pca_after": up(pca_rgb(noisy, basis_from=clean), "nearest"),
            "map_before": up(torch.sigmoid(map_b)), "map_after": up(torch.sigmoid(map_a)),
            "score_before": torch.sigmoid(score_b).cpu(), "score_after": torch.sigmoid(score_a).cpu()}


def plot_feature_anomalies(views: dict[str, torch.Tensor], max_rows: int = 4) -> Any:
    """A matplotlib figure: image | synthetic mask | ‖Δf‖ | PCA before | PCA after | map before | map after."""
    import matplotlib.pyplot as plt

    cols = [("image", "image"), ("mask", "synthetic mask"), ("delta", "‖Δ feature‖"), ("pca_before", "PCA before"),
            ("pca_after", "PCA after"), ("map_before", "map before"), ("map_after", "map after")]
    n = min(max_rows, len(views["image"]))
    fig, axes = plt.subplots(n, len(cols), figsize=(2 * len(cols), 2 * n), squeeze=False)
    for r in range(n):
        for c, (key, title) in enumerate(cols):
            t = views[key][r]
            ax = axes[r][c]
            if t.shape[0] == 3:
                ax.imshow(t.permute(1, 2, 0).numpy())
            else:
                vmax = 1.0 if key in ("mask", "map_before", "map_after") else max(float(t.max()), 1e-12)
                ax.imshow(t[0].numpy(), cmap="magma" if key != "mask" else "gray", vmin=0, vmax=vmax)
            if key in ("map_before", "map_after"):
                s = views["score_before" if key == "map_before" else "score_after"][r]
                title = f"{title} (score {float(s):.2f})"
            if r == 0 or key in ("map_before", "map_after"):
                ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig
