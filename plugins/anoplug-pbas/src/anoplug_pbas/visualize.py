"""Seeing PBAS's anomalies: normal features, their pushed-out twins and the centres, and the discriminator's view.

:func:`feature_anomalies` returns, for some images, the discriminator's map on the real
features and on their twins, a PCA view of both (same basis), and a 2-D PCA embedding of
normal features, twins and centres for a scatter plot (the "boundary" picture of the paper).
:func:`plot_feature_anomalies` draws both.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from anoplug.backbones import pca_rgb
from anoplug.types import Batch

__all__ = ["feature_anomalies", "plot_feature_anomalies"]


@torch.no_grad()
def feature_anomalies(model: Any, images: Batch | torch.Tensor, *, max_points: int = 2000) -> dict[str, torch.Tensor]:
    """Before/after views of PBAS's synthetic features for ``images`` (a fitted or untrained model).

    Returns ``image`` [B,3,H,W]; ``push`` [B,1,H,W] (‖twin − feature‖); ``pca_before`` /
    ``pca_after`` [B,3,H,W]; ``map_before`` / ``map_after`` [B,1,H,W] (discriminator on the
    features and on their twins); and 2-D coordinates ``points_normal``, ``points_twin``,
    ``points_centre`` [N,2] from one PCA of the normal features.
    """
    x = images.image if isinstance(images, Batch) else images
    size = x.shape[-2:]
    rows, (h, w) = model.features(x)
    b, _, d = rows.shape
    proj = model.projection(rows.reshape(-1, d)).reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
    twins, _ = model.generate_features(proj)
    centres = model.centres if model.centres is not None else proj.permute(0, 2, 3, 1).reshape(b, h * w, d).mean(0)

    def dsc(f: torch.Tensor) -> torch.Tensor:
        return model.discriminator(f.permute(0, 2, 3, 1).reshape(-1, d)).reshape(b, 1, h, w)

    def up(t: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
        kw = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(t.float(), size=size, mode=mode, **kw).cpu()

    flat_n = proj.permute(0, 2, 3, 1).reshape(-1, d)
    flat_t = twins.permute(0, 2, 3, 1).reshape(-1, d)
    step = max(1, len(flat_n) // max_points)
    mean = flat_n.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(flat_n[::step] - mean, full_matrices=False)
    basis = v[:2].T
    return {"image": x.cpu(), "push": up((twins - proj).norm(dim=1, keepdim=True)),
            "pca_before": up(pca_rgb(proj)), "pca_after": up(pca_rgb(twins, basis_from=proj)),
            "map_before": up(dsc(proj), "bilinear"), "map_after": up(dsc(twins), "bilinear"),
            "points_normal": ((flat_n[::step] - mean) @ basis).cpu(), "points_twin": ((flat_t[::step] - mean) @ basis).cpu(),
            "points_centre": ((centres.to(mean.device) - mean) @ basis).cpu()}


def plot_feature_anomalies(views: dict[str, torch.Tensor], max_rows: int = 3) -> Any:
    """A matplotlib figure: per image (image | PCA before | PCA after | D before | D after) and one scatter."""
    import matplotlib.pyplot as plt

    cols = [("image", "image"), ("pca_before", "PCA features"), ("pca_after", "PCA twins"),
            ("map_before", "D(features)"), ("map_after", "D(twins)")]
    n = min(max_rows, len(views["image"]))
    fig = plt.figure(figsize=(2 * len(cols) + 4, 2 * n))
    grid = fig.add_gridspec(n, len(cols) + 2)
    for r in range(n):
        for c, (key, title) in enumerate(cols):
            ax = fig.add_subplot(grid[r, c])
            t = views[key][r]
            if t.shape[0] == 3:
                ax.imshow(t.permute(1, 2, 0).numpy())
            else:
                ax.imshow(t[0].numpy(), cmap="magma", vmin=0, vmax=1)
            if r == 0:
                ax.set_title(title, fontsize=8)
            ax.axis("off")
    ax = fig.add_subplot(grid[:, len(cols):])
    for key, label, style in (("points_normal", "normal features", dict(s=3, alpha=0.4)),
                              ("points_twin", "synthetic twins", dict(s=3, alpha=0.4)),
                              ("points_centre", "centres", dict(s=6, marker="x"))):
        p = views[key]
        ax.scatter(p[:, 0].numpy(), p[:, 1].numpy(), label=label, **style)
    ax.legend(fontsize=7)
    ax.set_title("2-D PCA of projected features", fontsize=8)
    fig.tight_layout()
    return fig
