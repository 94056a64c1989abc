"""Stage 2a of AnoGen: where the defect goes — a (rotated) box drawn per (object, defect) range, kept on the object.

The official mask script draws, for each (object, defect) pair, a rectangle whose width and
height are uniform integers in ``range × side`` and whose corner is uniform in the image, rotates
it about its centre by a uniform integer angle in [0, 180] degrees when the pair's rotate flag is
set, and accepts it only when more than 75 % of the rectangle's area (counted *before* the
rotation) lies on the foreground template; otherwise it draws again. This module does the same
with torch and a per-sample ``torch.Generator``:

- :func:`draw_boxes` draws candidates in fixed-size chunks (so a sample's draws do not depend on
  its batch) and returns the first accepted one, with the number of candidates it took;
- :func:`rasterise` turns a box record into a binary mask (pixel centres inside the rotated
  rectangle), the same function for drawn, replayed and user-given boxes;
- :func:`foreground_fraction` is the acceptance rule, vectorised over candidates.

The foreground is the image's ``object_mask`` when it has one (the per-image template of the
official VisA script) and the whole image otherwise (textures).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

__all__ = ["BoxRange", "draw_boxes", "rasterise", "rasterise_many", "foreground_fraction", "box_table",
           "range_from_masks", "box_from_corners", "CHUNK"]

#: candidates drawn per chunk; a sample draws whole chunks until one candidate passes.
CHUNK = 64


@dataclass(frozen=True)
class BoxRange:
    """Width and height ranges (fractions of the image side) and whether the box is rotated."""

    width: tuple[float, float]
    height: tuple[float, float]
    rotate: bool = True

    def to_json(self) -> list:
        return [list(self.width), list(self.height), self.rotate]

    @classmethod
    def from_json(cls, v: Any) -> BoxRange:
        (w0, w1), (h0, h1), rot = v
        if not (0 < w0 <= w1 <= 1 and 0 < h0 <= h1 <= 1):
            raise ValueError(f"a box range needs 0 < lo <= hi <= 1 for width and height, got {v!r}")
        return cls((float(w0), float(w1)), (float(h0), float(h1)), bool(rot))


@cache
def box_table(name: str) -> dict[str, dict[str, BoxRange]]:
    """The shipped range table ``"mvtec"`` (the official ``mvtec_range.json``) or ``"toy"`` (measured here)."""
    path = Path(__file__).parent / f"box_ranges_{name}.json"
    if not path.is_file():
        raise ValueError(f"no box range table {name!r}")
    raw = json.loads(path.read_text())["ranges"]
    return {obj: {d: BoxRange.from_json(v) for d, v in ds.items()} for obj, ds in raw.items()}


def range_from_masks(masks: torch.Tensor) -> BoxRange:
    """The range spanned by the bounding boxes of some defect masks ``[K,1,H,W]`` (*our assumption*,
    for a pair no table lists: the k shots' own sizes)."""
    h, w = masks.shape[-2:]
    ws, hs = [], []
    for m in masks[:, 0] > 0.5:
        if not bool(m.any()):
            continue
        ys, xs = torch.nonzero(m, as_tuple=True)
        ws.append(float(xs.max() - xs.min() + 1) / w)
        hs.append(float(ys.max() - ys.min() + 1) / h)
    if not ws:
        raise ValueError("no defect mask to measure a box range from")
    return BoxRange((min(ws), max(ws)), (min(hs), max(hs)), True)


def _centres(h: int, w: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, dtype=torch.float32, device=device)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=device)[None, :] + 0.5
    return ys, xs


def rasterise_many(x: torch.Tensor, y: torch.Tensor, bw: torch.Tensor, bh: torch.Tensor, angle: torch.Tensor,
                   h: int, w: int) -> torch.Tensor:
    """``[N,H,W]`` binary masks of N rectangles (corner x, y, size bw × bh in pixels) rotated by ``angle`` degrees
    about their centres (counter-clockwise on screen, as OpenCV's ``getRotationMatrix2D``).

    A pixel belongs to a box when its centre lies strictly inside, so an unrotated integer box
    covers exactly bw × bh pixels (the area the acceptance rule divides by).
    """
    ys, xs = _centres(h, w, x.device)
    cx, cy = (x + bw / 2)[:, None, None], (y + bh / 2)[:, None, None]
    a = torch.deg2rad(angle.float())[:, None, None]
    dx, dy = xs[None] - cx, ys[None] - cy
    # inverse rotation of the pixel centre into the box frame (y points down on screen)
    u = dx * torch.cos(a) - dy * torch.sin(a)
    v = dx * torch.sin(a) + dy * torch.cos(a)
    return ((u.abs() < bw[:, None, None] / 2) & (v.abs() < bh[:, None, None] / 2)).float()


def rasterise(box: dict[str, Any], h: int, w: int) -> torch.Tensor:
    """The binary mask ``[1,H,W]`` of one box record (``x, y, w, h`` in pixels of its ``grid``, ``angle`` degrees).

    A record drawn on another grid is scaled to ``(h, w)`` first, so a replay at another size
    puts the box in the same place.
    """
    gh, gw = box.get("grid", [h, w])
    sy, sx = h / gh, w / gw
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return rasterise_many(t(box["x"] * sx), t(box["y"] * sy), t(box["w"] * sx), t(box["h"] * sy), t(box["angle"]),
                          h, w)


def foreground_fraction(boxes: torch.Tensor, unrotated_area: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Share of each box's *unrotated* area that lies on the foreground ``[H,W]`` after rotation: the official
    rule divides the overlap of the rotated box by the pixel count of the box before it was rotated."""
    return (boxes * foreground[None]).flatten(1).sum(1) / unrotated_area.clamp_min(1.0)


def draw_boxes(rng: torch.Generator, rng_range: BoxRange, foreground: torch.Tensor, *, min_foreground: float = 0.75,
               rotate: bool = True, max_draws: int = 4096) -> dict[str, Any]:
    """One box for one image: candidates in chunks of :data:`CHUNK` from ``rng`` until one puts more than
    ``min_foreground`` of its area on ``foreground`` ``[H,W]`` (the official ``common_size > 0.75``).

    Per candidate, in this order within a chunk: widths, heights, x, y, angles. ``rotate=False``
    still draws the angles (so the rng advances alike) and uses 0. After ``max_draws`` candidates
    without success (the official script loops forever) the candidate with the largest
    foreground share is kept and the record says ``accepted: false``.
    """
    h, w = foreground.shape[-2:]
    fg = (foreground.reshape(h, w) > 0.5).float()
    lo_w, hi_w = max(1, int(rng_range.width[0] * w)), max(1, int(rng_range.width[1] * w))
    lo_h, hi_h = max(1, int(rng_range.height[0] * h)), max(1, int(rng_range.height[1] * h))
    best: tuple[float, dict[str, Any]] | None = None
    drawn = 0
    while drawn < max_draws:
        bw = torch.randint(lo_w, max(lo_w, hi_w) + 1, (CHUNK,), generator=rng)
        bh = torch.randint(lo_h, max(lo_h, hi_h) + 1, (CHUNK,), generator=rng)
        bw, bh = bw.clamp(max=w), bh.clamp(max=h)
        x = (torch.rand(CHUNK, generator=rng) * (w - bw + 1).float()).floor().clamp(max=(w - bw).float())
        y = (torch.rand(CHUNK, generator=rng) * (h - bh + 1).float()).floor().clamp(max=(h - bh).float())
        angle = torch.randint(0, 181, (CHUNK,), generator=rng)
        if not rotate:
            angle = torch.zeros_like(angle)
        masks = rasterise_many(x, y, bw.float(), bh.float(), angle, h, w)
        share = foreground_fraction(masks, (bw * bh).float(), fg)
        ok = torch.nonzero(share > min_foreground).flatten()
        k = int(ok[0]) if len(ok) else int(share.argmax())
        rec = {"x": int(x[k]), "y": int(y[k]), "w": int(bw[k]), "h": int(bh[k]), "angle": int(angle[k]),
               "grid": [int(h), int(w)], "foreground": round(float(share[k]), 6)}
        if len(ok):
            return {**rec, "draws": drawn + k + 1, "accepted": True}
        drawn += CHUNK
        if best is None or float(share[k]) > best[0]:
            best = (float(share[k]), rec)
    assert best is not None
    return {**best[1], "draws": drawn, "accepted": False}


def box_from_corners(x1: float, y1: float, x2: float, y2: float, h: int, w: int) -> dict[str, Any]:
    """A user's axis-aligned box ``(x1, y1, x2, y2)`` in [0, 1] as a box record on an ``h × w`` grid."""
    return {"x": x1 * w, "y": y1 * h, "w": (x2 - x1) * w, "h": (y2 - y1) * h, "angle": 0, "grid": [int(h), int(w)]}

