"""A small electroluminescence-like (EL) solar-cell array, rendered procedurally, with its own real defects.

Why this exists: PDIG (the paper) trains on EL images of photovoltaic cells, and none of the
host's toy categories looks like one (``toy:tile`` is the nearest grid but has no busbars,
fingers, dark cells or finger interruptions). This module is the plugin's *own* training and
test data until a host category takes its place (*our assumption*, documented in the README).

What an image shows (all sizes are fractions of the side, so any size renders alike): a 2×2
crop of a module, cells separated by dark gaps; each mono-Si cell has chamfered (dark) corners,
two vertical busbars, faint horizontal fingers and a mottled brightness. Three defect kinds, the
ones EL inspection names most often, each with an exact mask:

- ``crack``: a dark, thin, bent line inside one cell (a micro-crack), sometimes with a branch;
- ``dark_cell``: a whole cell, or the part of it beyond a straight cut, darkened (an inactive area);
- ``finger``: a finger interruption, a dark band between a busbar and the cell edge (or between
  the busbars) spanning a few fingers, darkest away from the busbar.

Every random draw comes from one ``torch.Generator`` per sample, seeded from
``(seed, split, index)`` alone, so a sample never depends on how many others are rendered.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from anoplug.types import GOOD, Batch

__all__ = ["DEFECTS", "render_sample", "normals", "defects", "dataset"]

#: the defect kinds of this set, in a fixed order (the label of a sample)
DEFECTS: tuple[str, ...] = ("crack", "dark_cell", "finger")
_SPLITS = ("train", "test")
_DRAW = 128  # every image is drawn at this size and area-downsampled (thin lines stay smooth)
_CELLS = 2  # cells per side of the crop


def _rng(split: str, index: int, seed: int) -> torch.Generator:
    key = (int(seed) * 1_000_003 + _SPLITS.index(split) * 7_919 + int(index)) & 0x7FFF_FFFF_FFFF
    return torch.Generator().manual_seed(zlib.crc32(str(key).encode()) * 65_537 + int(index))


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _smooth_noise(g: torch.Generator, n: int, cells: int) -> torch.Tensor:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bicubically upsampled."""
    coarse = torch.randn(1, 1, cells, cells, generator=g)
    return F.interpolate(coarse, size=(n, n), mode="bicubic", align_corners=False)[0, 0].clamp(-2.5, 2.5) / 2.5


def _cell_boxes(n: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of each cell, gaps excluded."""
    step, gap = n // _CELLS, max(2, n // 40)
    return [(r * step + gap, c * step + gap, (r + 1) * step - gap, (c + 1) * step - gap)
            for r in range(_CELLS) for c in range(_CELLS)]


def _busbars(box: tuple[int, int, int, int]) -> list[int]:
    y0, x0, y1, x1 = box
    w = x1 - x0
    return [x0 + w // 3, x0 + (2 * w) // 3]


def _normal(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A defect-free EL crop ``[n, n]`` in [0, 1] and its cell-index map (−1 = gap)."""
    img = torch.full((n, n), 0.06)
    cell_id = torch.full((n, n), -1, dtype=torch.long)
    ys, xs = torch.arange(n)[:, None], torch.arange(n)[None, :]
    pitch = max(3, n // 21)  # finger spacing
    for k, (y0, x0, y1, x1) in enumerate(_cell_boxes(n)):
        h, w = y1 - y0, x1 - x0
        level = _u(g, 0.52, 0.74)
        cell = level + 0.07 * _smooth_noise(g, max(h, w), 4)[:h, :w]
        fy = torch.arange(h)[:, None]
        cell = cell - 0.05 * ((fy % pitch) == 0).float()
        cut = max(2, h // 7)  # chamfered corners of a pseudo-square mono-Si cell
        ly, lx = torch.arange(h)[:, None], torch.arange(w)[None, :]
        corner = ((ly + lx) < cut) | ((ly + (w - 1 - lx)) < cut) | (((h - 1 - ly) + lx) < cut) | \
                 (((h - 1 - ly) + (w - 1 - lx)) < cut)
        cell = torch.where(corner, torch.full_like(cell, 0.08), cell)
        for bx in _busbars((y0, x0, y1, x1)):
            half = max(1, n // 100)
            sel = (torch.arange(w)[None, :] + x0 >= bx - half) & (torch.arange(w)[None, :] + x0 <= bx + half)
            cell = torch.where(sel.expand(h, w) & ~corner, torch.full_like(cell, 0.22), cell)
        img[y0:y1, x0:x1] = cell
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        cell_id[inside] = k
    img = img + 0.015 * torch.randn(n, n, generator=g)  # sensor noise
    return img.clamp(0, 1), cell_id


def _line_mask(n: int, points: Sequence[tuple[float, float]], width: float) -> torch.Tensor:
    """Pixels within ``width / 2`` of the polyline through ``points`` (y, x)."""
    ys, xs = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    d = torch.full((n, n), float("inf"))
    for (ay, ax), (by, bx) in zip(points[:-1], points[1:]):
        vy, vx = by - ay, bx - ax
        ll = max(vy * vy + vx * vx, 1e-6)
        t = (((ys - ay) * vy + (xs - ax) * vx) / ll).clamp(0, 1)
        d = torch.minimum(d, ((ys - ay - t * vy) ** 2 + (xs - ax - t * vx) ** 2).sqrt())
    return d <= width / 2


def _crack(g: torch.Generator, img: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    n = img.shape[0]
    y0, x0, y1, x1 = box
    pts = [(_u(g, y0 + 4, y1 - 4), _u(g, x0 + 4, x1 - 4))]
    ang = _u(g, 0, 3.1416)
    for _ in range(int(torch.randint(2, 4, (), generator=g))):
        ang += _u(g, -0.7, 0.7)
        step = _u(g, 0.12, 0.25) * n
        y, x = pts[-1]
        pts.append((min(max(y + step * torch.tensor(ang).sin().item(), y0 + 1), y1 - 2),
                    min(max(x + step * torch.tensor(ang).cos().item(), x0 + 1), x1 - 2)))
    m = _line_mask(n, pts, _u(g, 1.5, 2.5))
    if _u(g, 0, 1) < 0.5:  # a branch from the middle of the crack
        k = len(pts) // 2
        by, bx = pts[k]
        a2 = ang + _u(g, 0.6, 1.4) * (1 if _u(g, 0, 1) < 0.5 else -1)
        s2 = _u(g, 0.08, 0.15) * n
        end = (min(max(by + s2 * torch.tensor(a2).sin().item(), y0 + 1), y1 - 2),
               min(max(bx + s2 * torch.tensor(a2).cos().item(), x0 + 1), x1 - 2))
        m = m | _line_mask(n, [(by, bx), end], 1.5)
    inside = torch.zeros(n, n, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    m = m & inside
    img[m] = img[m] * _u(g, 0.25, 0.45)
    return m


def _dark_cell(g: torch.Generator, img: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    n = img.shape[0]
    y0, x0, y1, x1 = box
    ys, xs = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    m = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    if _u(g, 0, 1) < 0.6:  # only the part beyond a straight cut (a cell fragment isolated by a crack)
        cy, cx = _u(g, y0 + 0.3 * (y1 - y0), y0 + 0.7 * (y1 - y0)), _u(g, x0 + 0.3 * (x1 - x0), x0 + 0.7 * (x1 - x0))
        a = _u(g, 0, 6.2832)
        m = m & (((ys - cy) * torch.tensor(a).sin() + (xs - cx) * torch.tensor(a).cos()) > 0)
    img[m] = img[m] * _u(g, 0.3, 0.55)
    return m


def _finger(g: torch.Generator, img: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    n = img.shape[0]
    y0, x0, y1, x1 = box
    bars = _busbars(box)
    spans = [(x0, bars[0]), (bars[0], bars[1]), (bars[1], x1)]
    a, b = spans[int(torch.randint(0, 3, (), generator=g))]
    hgt = int(_u(g, 0.05, 0.11) * n)
    top = int(_u(g, y0 + 0.15 * (y1 - y0), y1 - 0.15 * (y1 - y0) - hgt))
    m = torch.zeros(n, n, dtype=torch.bool)
    m[top:top + hgt, a + 1:b] = True
    xs = torch.arange(n).float()[None, :].expand(n, n)
    # darkest far from the busbar that still feeds the interrupted fingers (EL's finger-interruption look)
    near = float(b) if a == x0 else float(a)
    dist = ((xs - near).abs() / max(b - a, 1)).clamp(0, 1)
    factor = 1.0 - _u(g, 0.35, 0.55) * (0.4 + 0.6 * dist)
    img[m] = img[m] * factor[m]
    return m


_DRAWERS = {"crack": _crack, "dark_cell": _dark_cell, "finger": _finger}


def render_sample(index: int, *, split: str = "train", size: int = 64, seed: int = 0,
                  kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """One sample: image ``[3, size, size]`` in [0, 1], binary mask ``[1, size, size]``, label.

    ``kind`` is a defect of :data:`DEFECTS` or None (a normal crop). The defect's cell is drawn
    from the sample's own generator.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if kind is not None and kind not in _DRAWERS:
        raise ValueError(f"unknown EL defect {kind!r}; choose one of {', '.join(DEFECTS)}")
    g = _rng(split, index, seed)
    img, _ = _normal(g, _DRAW)
    mask = torch.zeros(_DRAW, _DRAW, dtype=torch.bool)
    if kind is not None:
        box = _cell_boxes(_DRAW)[int(torch.randint(0, _CELLS * _CELLS, (), generator=g))]
        mask = _DRAWERS[kind](g, img, box)
    img4 = F.interpolate(img[None, None], size=(size, size), mode="area")[0]
    m4 = (F.interpolate(mask[None, None].float(), size=(size, size), mode="area")[0] > 0).float()
    return img4.clamp(0, 1).expand(3, -1, -1).contiguous(), m4, kind or GOOD


def _batch(items: list[tuple[torch.Tensor, torch.Tensor, str]], split: str, seed: int, start: int) -> Batch:
    return Batch(image=torch.stack([i for i, _, _ in items]), mask=torch.stack([m for _, m, _ in items]),
                 label=[lab for _, _, lab in items],
                 meta=[{"source": f"elcells:{split}:{seed}:{start + k}"} for k in range(len(items))])


def normals(n: int, *, size: int = 64, seed: int = 0, split: str = "train", start: int = 0) -> Batch:
    """``n`` defect-free crops (indices ``start…start+n−1``)."""
    return _batch([render_sample(start + i, split=split, size=size, seed=seed) for i in range(n)], split, seed, start)


def defects(n: int, *, size: int = 64, seed: int = 0, split: str = "train", kinds: Sequence[str] = DEFECTS,
            start: int = 10_000) -> Batch:
    """``n`` defective crops, the kinds in turn (crack, dark_cell, finger, crack, …), with exact masks."""
    kinds = tuple(kinds)
    return _batch([render_sample(start + i, split=split, size=size, seed=seed, kind=kinds[i % len(kinds)])
                   for i in range(n)], split, seed, start)


def dataset(split: str = "train", *, n_normal: int = 32, n_defect: int = 48, size: int = 64,
            seed: int = 0) -> tuple[Batch, Batch]:
    """(normals, defects) of one split; ``test`` uses other indices' generators than ``train``."""
    return normals(n_normal, size=size, seed=seed, split=split), defects(n_defect, size=size, seed=seed, split=split)
