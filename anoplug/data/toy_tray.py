"""The logical category ``tray``: parts in a fixed arrangement (the MVTec LOCO analogue).

A light tray with two rows of three recessed slots holds, by rule, washer - red cap -
washer on top and blue block - screw - blue block below. Logical defects break the
rule without any local damage: a part is missing, an extra part lies in the tray, a
part sits outside its slot (misplaced), or two different parts trade places (swapped).
Ground truth follows MVTec LOCO: the region where the rule is broken (an empty slot
is marked where its part should be).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from anoplug.data.toy_render import Scene, grid, noise, smooth_step

__all__ = ["render_tray", "LAYOUT", "SLOTS"]

#: slot centres (x, y) in image fractions, and the part each slot must hold
SLOTS = [(0.24, 0.36), (0.5, 0.36), (0.76, 0.36), (0.24, 0.64), (0.5, 0.64), (0.76, 0.64)]
LAYOUT = ["washer", "red cap", "washer", "blue block", "screw", "blue block"]
_PARTS = ("washer", "red cap", "blue block", "screw")


def _rounded_box(px: np.ndarray, py: np.ndarray, hx: float, hy: float, r: float) -> np.ndarray:
    qx, qy = np.abs(px) - hx + r, np.abs(py) - hy + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


_REACH = 0.125  # every part fits in a square of this half-width around its centre (image fractions)


def _window(cx: float, cy: float, n: int) -> tuple[slice, slice]:
    """Pixel window around a part, so each part is drawn on a small crop, not the whole image."""
    x0, x1 = int(np.floor((cx - _REACH) * n)), int(np.ceil((cx + _REACH) * n))
    y0, y1 = int(np.floor((cy - _REACH) * n)), int(np.ceil((cy + _REACH) * n))
    return slice(max(y0, 0), min(y1, n)), slice(max(x0, 0), min(x1, n))


def _part(kind: str, cx: float, cy: float, ang: float, n: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """(window, coverage, colour, height) of one part on its window; shading comes from its height."""
    win = _window(cx, cy, n)
    gy, gx = grid(n)
    y, x = gy[win], gx[win]
    px, py = x - cx, y - cy
    c, s = np.cos(ang), np.sin(ang)
    qx, qy = px * c + py * s, -px * s + py * c
    rr = np.hypot(px, py)
    if kind == "washer":
        sdf = np.maximum(rr - 0.072, 0.03 - rr)
        h = 0.012 * np.sin(np.clip((rr - 0.03) / 0.042, 0, 1) * np.pi) ** 0.5
        col = np.array([0.72, 0.73, 0.76])
    elif kind == "red cap":
        sdf = rr - 0.068
        h = 0.02 * np.sqrt(np.clip(1 - (rr / 0.068) ** 2, 0, 1)) - 0.004 * (rr < 0.04)
        col = np.array([0.78, 0.12, 0.10])
    elif kind == "blue block":
        sdf = _rounded_box(qx, qy, 0.062, 0.062, 0.014)
        h = 0.02 * smooth_step(0.0, 0.02, -sdf)
        col = np.array([0.14, 0.30, 0.70])
    else:  # screw: a threaded shank with a round head at one end
        shank = _rounded_box(qx - 0.02, qy, 0.07, 0.016, 0.008)
        rh = np.hypot(qx + 0.065, qy)
        head = rh - 0.034
        sdf = np.minimum(shank, head)
        on_shank = (shank < 0) & (head > 0)
        h = np.where(head <= 0, 0.02 * np.sqrt(np.clip(1 - (rh / 0.034) ** 2, 0, 1)),
                     0.015 * np.sqrt(np.clip(1 - (qy / 0.017) ** 2, 0, 1)) + 0.004 * np.sin(qx * 260) * on_shank)
        col = np.array([0.62, 0.62, 0.60])
    cover = np.clip(0.5 - sdf * n, 0, 1)
    return win, cover, col, h * cover


@lru_cache(maxsize=8)
def _tray_geometry(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(tray coverage, height with recessed slots): the same for every sample, so cached per size."""
    y, x = grid(n)
    body = _rounded_box(x - 0.5, y - 0.5, 0.42, 0.28, 0.03)
    tray = np.clip(0.5 - body * n, 0, 1)
    height = 0.03 * smooth_step(0.0, 0.012, -body)
    for sx, sy in SLOTS:
        slot = _rounded_box(x - sx, y - sy, 0.105, 0.115, 0.02)
        height = height - 0.02 * smooth_step(0.0, 0.01, -slot)
    tray.flags.writeable = False
    height.flags.writeable = False
    return tray, height


def _tray_base(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    tray, height = _tray_geometry(n)
    belt = (0.22 + 0.015 * noise(rng, n, (n // 2, 3)))[..., None] * np.array([0.85, 0.9, 1.0])
    plastic = (0.80 + 0.01 * noise(rng, n, 8) + rng.normal(0, 0.01))[..., None] * np.array([0.97, 0.97, 0.95])
    albedo = belt * (1 - tray[..., None]) + plastic * tray[..., None]
    return albedo, height.copy()


def render_tray(rng: np.random.Generator, n: int, label: str) -> tuple[Scene, str]:
    """Render the tray for ``label`` ("good" or a logical defect); returns (scene, phrase)."""
    parts = [[kind, sx + rng.normal(0, 0.008), sy + rng.normal(0, 0.008),
              rng.normal(0, 0.12) if kind == "screw" else rng.uniform(0, np.pi)]
             for kind, (sx, sy) in zip(LAYOUT, SLOTS)]
    marks: list[tuple[str, float, float, float]] = []  # footprints that form the ground truth
    phrase = ""
    if label == "missing":
        k = int(rng.integers(len(parts)))
        marks.append(tuple(parts[k]))
        phrase = f"a missing {parts[k][0]}"
        del parts[k]
    elif label == "extra":
        kind = _PARTS[int(rng.integers(len(_PARTS)))]
        k = int(rng.integers(len(SLOTS)))
        sx, sy = SLOTS[k]
        extra = [kind, sx + rng.choice([-1, 1]) * rng.uniform(0.04, 0.06), sy + rng.choice([-1, 1]) * rng.uniform(0.03, 0.05),
                 rng.uniform(0, np.pi)]
        parts.append(extra)
        marks.append(tuple(extra))
        phrase = f"an extra {kind}"
    elif label == "misplaced":
        k = int(rng.integers(len(parts)))
        marks.append(tuple(parts[k]))
        # onto the tray's rim between the rows or beside the slots
        gaps = [(0.37, 0.5), (0.63, 0.5), (0.5, 0.5), (0.13, 0.5), (0.87, 0.5)]
        gx, gy = gaps[int(rng.integers(len(gaps)))]
        parts[k] = [parts[k][0], gx + rng.normal(0, 0.01), gy + rng.normal(0, 0.01), rng.uniform(0, np.pi)]
        marks.append(tuple(parts[k]))
        phrase = f"a misplaced {parts[k][0]}"
    elif label == "swapped":
        pairs = [(a, b) for a in range(6) for b in range(a + 1, 6) if LAYOUT[a] != LAYOUT[b]]
        a, b = pairs[int(rng.integers(len(pairs)))]
        parts[a][0], parts[b][0] = parts[b][0], parts[a][0]
        marks += [tuple(parts[a]), tuple(parts[b])]
        phrase = f"a {parts[b][0]} and a {parts[a][0]} swapped"

    albedo, height = _tray_base(rng, n)
    obj = np.zeros((n, n))
    off = max(1, n // 80)
    for kind, cx, cy, ang in parts:
        win, cover, col, h = _part(kind, cx, cy, ang, n)
        # a soft contact shadow offset to the lower right
        sh = np.zeros_like(cover)
        sh[off:, off:] = cover[:-off, :-off]
        a = albedo[win] * (1 - 0.3 * (sh * (1 - cover))[..., None])
        albedo[win] = a * (1 - cover[..., None]) + col * cover[..., None]
        height[win] = height[win] * (1 - cover) + h
        obj[win] = np.maximum(obj[win], cover)
    sc = Scene(n=n, albedo=albedo, object_mask=(obj > 0.5).astype(np.float32))
    sc.height = height
    sc.specular = 0.35
    for kind, cx, cy, ang in marks:
        win, cover, _, _ = _part(kind, cx, cy, ang, n)
        sc.mask[win] = np.maximum(sc.mask[win], cover > 0.3)
    return sc, phrase
