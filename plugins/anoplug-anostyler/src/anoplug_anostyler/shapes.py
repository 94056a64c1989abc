"""Meta-shape priors: where the anomaly goes, drawn procedurally on a 256² canvas (AnoStyler §mask generation).

AnoStyler does not learn where defects are; it draws one to ``m_max`` generic shapes — a
thin tapered *line* (scratches, cracks), a jittered *dot* polygon (holes, spots) and a
blurred random-walk *freeform* blob (stains, contamination) — and ORs them. The number of
shapes follows p(m) ∝ exp(−α·m), so one shape is most likely. Every parameter below is the
official code's (``src/meta_shape_priors.py``); the rasterisation uses OpenCV as the
official code does (``cv2.line`` anti-aliased then thresholded, ``cv2.fillPoly``,
``cv2.GaussianBlur``), so shapes look the same. What differs: every random number comes
from the sample's own ``torch.Generator`` (the official code uses the global numpy / random
state), so a mask is reproducible from its seed alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.ndimage import label

__all__ = ["CANVAS", "SHAPES", "ShapeDraw", "uniform", "randint", "normal", "draw_count", "line", "dot", "freeform",
           "meta_mask"]

#: side of the canvas the priors are drawn on (official code: base_W = base_H = 256).
CANVAS = 256
#: the three meta-shapes, drawn uniformly (official code: ``random.choice([msp_line, msp_dot, msp_freeform])``).
SHAPES = ("line", "dot", "freeform")


# -- seeded draws ------------------------------------------------------------------------------
def uniform(rng: torch.Generator, lo: float, hi: float, n: int | None = None) -> float | np.ndarray:
    """U(lo, hi) from ``rng``: one float, or an array of ``n``."""
    u = torch.rand(1 if n is None else n, generator=rng, dtype=torch.float64).numpy()
    v = lo + (hi - lo) * u
    return float(v[0]) if n is None else v


def randint(rng: torch.Generator, lo: int, hi: int, n: int | None = None) -> int | np.ndarray:
    """Integers in [lo, hi) (numpy's ``randint`` convention, which the official code uses)."""
    v = torch.randint(lo, hi, (1 if n is None else n,), generator=rng).numpy()
    return int(v[0]) if n is None else v


def normal(rng: torch.Generator, std: float, n: int) -> np.ndarray:
    """``n`` draws of N(0, std²)."""
    return std * torch.randn(n, generator=rng, dtype=torch.float64).numpy()


@dataclass(frozen=True)
class ShapeDraw:
    """One drawn prior: the binary canvas and the kinds of shape OR-ed into it (provenance)."""

    mask: np.ndarray  # uint8 {0, 1}, [CANVAS, CANVAS]
    kinds: tuple[str, ...]


def draw_count(rng: torch.Generator, m_max: int, alpha: float) -> int:
    """m ∈ {1..m_max} with p(m) ∝ exp(−α·m) (official defaults m_max = 5, α = 0.7)."""
    p = torch.exp(-alpha * torch.arange(1, m_max + 1, dtype=torch.float64))
    return int(torch.multinomial(p / p.sum(), 1, generator=rng)) + 1


# -- the three shapes ----------------------------------------------------------------------------
def line(rng: torch.Generator, w: int = CANVAS, h: int = CANVAS) -> np.ndarray:
    """A tapered polyline: centre and angle uniform, length 60–200 px, 20–39 points, half bent.

    Thickness rises 1 → 7 px to the middle and falls back, with ±10 % of the range as noise;
    with p = 0.5 the points get a lateral N(0, 14²) jitter smoothed by a 5-tap σ = 2 Gaussian
    (a bent scratch instead of a straight one).
    """
    m = np.zeros((h, w), np.uint8)
    c = np.array([uniform(rng, 0, w), uniform(rng, 0, h)])
    theta = math.radians(uniform(rng, 0, 180))
    length = uniform(rng, 60, 200)
    s = randint(rng, 20, 40)
    x = np.linspace(-length / 2, length / 2, s)
    y = np.zeros_like(x)
    if uniform(rng, 0, 1) < 0.5:
        eps = normal(rng, 14.0, s).astype(np.float32).reshape(-1, 1)
        y = y + cv2.GaussianBlur(eps, (1, 5), 2).reshape(-1)
    lo, hi = 1, 7
    thick = np.array(np.linspace(lo, hi, s // 2).tolist() + np.linspace(hi, lo, s - s // 2).tolist())
    thick = np.clip(thick + uniform(rng, -0.1 * (hi - lo), 0.1 * (hi - lo), s), lo, hi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    pts = (rot @ np.stack([x, y])).T + c
    for i in range(s - 1):
        p1, p2 = pts[i], pts[i + 1]
        cv2.line(m, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), 255, int(thick[i]), lineType=cv2.LINE_AA)
    return (m > 127).astype(np.uint8)


def dot(rng: torch.Generator, w: int = CANVAS, h: int = CANVAS) -> np.ndarray:
    """A jittered polygon: 12–29 vertices at radius 5–35 px, x-aspect 0.6–1.4, half of them blurred.

    The radial jitter is a fraction β ∈ [0.05, 0.35] of r, uniform when u ≥ 0.66 and Gaussian
    otherwise; with p = 0.5 a 3/5/7 Gaussian blur then the 127 threshold rounds the corners.
    """
    m = np.zeros((h, w), np.uint8)
    c = np.array([uniform(rng, 0, w), uniform(rng, 0, h)])
    r = uniform(rng, 5, 35)
    s = randint(rng, 12, 30)
    theta = np.sort(uniform(rng, 0, 2 * math.pi, s))
    aspect = uniform(rng, 0.6, 1.4)
    beta = uniform(rng, 0.05, 0.35)
    u = uniform(rng, 0, 1)
    jitter = uniform(rng, -beta * r, beta * r, s) if u >= 0.66 else normal(rng, beta * r, s)
    xs = c[0] + (r + jitter) * np.cos(theta) * aspect
    ys = c[1] + (r + jitter) * np.sin(theta)
    cv2.fillPoly(m, [np.stack([xs, ys], 1).astype(np.int32)], 255)
    if uniform(rng, 0, 1) < 0.5:
        k = (3, 5, 7)[randint(rng, 0, 3)]
        m = cv2.GaussianBlur(m, (k, k), 0)  # sigma 0: OpenCV derives it from k, as in the official code
    return (m > 127).astype(np.uint8)


def _walk(rng: torch.Generator, n: int, w: int, h: int) -> np.ndarray:
    """Visited pixels of an ``n``-step 8-neighbour walk (staying put allowed), clipped at the border."""
    start = (randint(rng, 0, w), randint(rng, 0, h))
    steps = torch.randint(-1, 2, (n, 2), generator=rng).numpy()
    visited = np.zeros((h, w), np.uint8)
    x, y = start
    xs, ys = np.empty(n, np.int64), np.empty(n, np.int64)
    for i in range(n):  # clipping makes each step depend on the last: a cheap scalar loop (≤ 18k steps)
        xs[i], ys[i] = x, y
        x = min(max(x + int(steps[i, 0]), 0), w - 1)
        y = min(max(y + int(steps[i, 1]), 0), h - 1)
    visited[ys, xs] = 1
    return visited


def freeform(rng: torch.Generator, w: int = CANVAS, h: int = CANVAS) -> np.ndarray:
    """A blob: a 300–18,000-step random walk, blurred with σ ∈ [2, 12], thresholded at 0.5, largest part kept.

    The blur turns a dense walk into a solid stain-like region; with p = 0.5 a 3×3-cross
    closing (dilate, erode) fills pinholes first; 8-connected components are labelled and
    only the largest survives. A sparse walk under a wide blur stays below 0.5 and the shape
    comes out empty — the official behaviour (the caller redraws an all-empty prior).
    """
    n = randint(rng, 300, 18001)
    sigma = uniform(rng, 2, 12)
    m = _walk(rng, n, w, h).astype(np.float32)
    k = int(2 * sigma + 1)
    k += 1 - k % 2
    m = cv2.GaussianBlur(m, (k, k), sigmaX=sigma)
    if uniform(rng, 0, 1) < 0.5:
        cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
        m = cv2.erode(cv2.dilate(m, cross, iterations=1), cross, iterations=1)
    b = (m > 0.5).astype(np.uint8)
    lab, num = label(b, structure=np.ones((3, 3)))
    if num > 1:
        areas = np.bincount(lab.ravel())[1:]
        b = (lab == 1 + int(np.argmax(areas))).astype(np.uint8)
    return b


_DRAW = {"line": line, "dot": dot, "freeform": freeform}


def meta_mask(rng: torch.Generator, m_max: int = 5, alpha: float = 0.7) -> ShapeDraw:
    """One prior on the 256² canvas: m shapes (p ∝ exp(−α·m)), each uniform among line/dot/freeform, OR-ed."""
    count = draw_count(rng, m_max, alpha)
    out = np.zeros((CANVAS, CANVAS), np.uint8)
    kinds = []
    for _ in range(count):
        kind = SHAPES[randint(rng, 0, len(SHAPES))]
        kinds.append(kind)
        out |= _DRAW[kind](rng)
    return ShapeDraw(out, tuple(kinds))
