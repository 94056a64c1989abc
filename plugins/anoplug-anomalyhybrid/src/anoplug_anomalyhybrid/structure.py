"""Step 1 of AnomalyHybrid: the structure maps (depth, edges) and step 5's local edits of them.

*paper*: edges come from a pretrained PiDiNet, depth from a pretrained Depth-Anything-V2,
or the dataset's own depth where it has one (MVTec 3D-AD); local anomalies are made by
manipulating the target's depth or edge map before generation.

Here (every choice below is *our assumption* unless marked):

- **depth** — the batch's own ``depth`` (``toy:surface3d``, ``mvtec-3d:`` z of the xyz
  tiff, a folder with xyz files, or any map the user puts on ``batch.depth``); a local
  Depth-Anything-V2 checkpoint through ``transformers`` (``depth_model`` = a directory, never
  a hub id; its relative inverse depth is negated so that larger = farther, the datasets'
  convention); or, for RGB-only data, a *shading proxy* (blurred luminance, "dark is deep"),
  which is crude and documented as such. ``depth_source="batch"`` refuses RGB-only data.
- **normalisation** — depth is centred on its per-image median and divided by its 2–98 %
  range, so a toy height map, an MVTec 3D-AD z map in metres and a Depth-Anything output
  look alike to the network; a small edit barely moves the median and the range.
- **edges** — the classical fallback for PiDiNet: Sobel gradient magnitude of the luminance
  divided by its per-image 99th percentile (default), or kornia's Canny; a user callable
  (``AnomalyHybrid.edge_estimator``) takes PiDiNet's place where a user has it.
- **edits** — a dent (depth pushed away from the camera) or a protrusion (pulled towards it)
  with a smooth cosine profile over a drawn ellipse or over a given ``target_mask``; an edge
  edit draws a crack-like polyline into the edge map inside the region.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["normalise_depth", "shading_proxy", "sobel_edges", "canny_edges", "DepthAnything", "ellipse_profile",
           "mask_profile", "crack_strokes", "gaussian_blur"]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of ``x`` [B,C,H,W]."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    return torch.quantile(x.flatten(1).float(), q, dim=1).view(-1, 1, 1, 1)


def normalise_depth(depth: torch.Tensor) -> torch.Tensor:
    """``(d − median) / (p98 − p2)`` per image, clamped to [−3, 3] (larger = farther from the camera)."""
    med = _quantile(depth, 0.5)
    span = (_quantile(depth, 0.98) - _quantile(depth, 0.02)).clamp_min(1e-6)
    return ((depth - med) / span).clamp(-3, 3)


def luminance(image: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * w).sum(1, keepdim=True)


def shading_proxy(image: torch.Tensor) -> torch.Tensor:
    """A depth stand-in for RGB-only data: 1 − blurred luminance ("dark is deep"). Crude; see the README."""
    sigma = max(1.0, image.shape[-1] / 64)
    return 1.0 - gaussian_blur(luminance(image), sigma)


def sobel_edges(image: torch.Tensor) -> torch.Tensor:
    """Sobel magnitude of the luminance over its per-image 99th percentile, in [0, 1] (PiDiNet's classical stand-in)."""
    from kornia.filters import sobel

    mag = sobel(luminance(image))
    return (mag / _quantile(mag, 0.99).clamp_min(1e-6)).clamp(0, 1)


def canny_edges(image: torch.Tensor) -> torch.Tensor:
    """kornia's Canny (hysteresis) edge map of the luminance, {0, 1}."""
    from kornia.filters import canny

    _, edges = canny(luminance(image), low_threshold=0.05, high_threshold=0.12)
    return edges.float()


class DepthAnything:
    """Depth-Anything-V2 (or any ``transformers`` depth-estimation checkpoint) from a *local* directory.

    ``DepthAnything("/models/Depth-Anything-V2-Small-hf")(images)`` → ``[B,1,H,W]``, larger =
    farther (the model's relative inverse depth, negated). Never downloads: ``local_files_only``.
    """

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu") -> None:
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"depth_model {str(directory)!r} is not a directory; give a local "
                                    "Depth-Anything-V2 checkpoint (transformers format), nothing is downloaded")
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.processor = AutoImageProcessor.from_pretrained(d, local_files_only=True)
        self.model = AutoModelForDepthEstimation.from_pretrained(d, local_files_only=True).to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        inputs = self.processor(images=list(images.cpu()), return_tensors="pt", do_rescale=False)
        pred = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).predicted_depth
        pred = F.interpolate(pred[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        return -pred.to(images.device)


EdgeFn = Callable[[torch.Tensor], torch.Tensor]


# -- 5. local edits --------------------------------------------------------------------------------------------------
def ellipse_profile(h: int, w: int, cy: float, cx: float, ry: float, rx: float, angle: float,
                    device: torch.device | None = None) -> torch.Tensor:
    """``[1,H,W]`` cos² bump: 1 at the centre, 0 on and outside the ellipse (centre/radii as fractions of the side)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    yy, xx = torch.meshgrid(ys - cy, xs - cx, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    u, v = (c * xx + s * yy) / rx, (-s * xx + c * yy) / ry
    r = torch.sqrt(u * u + v * v)
    return (torch.cos(0.5 * math.pi * r.clamp(max=1.0)) ** 2)[None]


def mask_profile(mask: torch.Tensor) -> torch.Tensor:
    """A smooth bump over a given region ``[B,1,H,W]``: the blurred mask inside it, peak scaled to 1."""
    sigma = max(1.0, mask.shape[-1] / 24)
    soft = gaussian_blur(mask.float(), sigma) * mask.float()
    peak = soft.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return soft / peak


def crack_strokes(h: int, w: int, points: list[tuple[float, float]], width: float,
                  device: torch.device | None = None) -> torch.Tensor:
    """``[1,H,W]`` in [0, 1]: a polyline through ``points`` (fractions of the side), anti-aliased, ``width`` px."""
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    best = torch.full((h, w), float("inf"), device=device)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        ay, ax, by, bx = y0 * h, x0 * w, y1 * h, x1 * w
        dy, dx = by - ay, bx - ax
        t = (((yy - ay) * dy + (xx - ax) * dx) / max(dy * dy + dx * dx, 1e-9)).clamp(0, 1)
        best = torch.minimum(best, torch.hypot(yy - (ay + t * dy), xx - (ax + t * dx)))
    return (1.0 - (best - 0.5 * width).clamp(0, 1))[None]
