"""The logical category ``tray``: parts in a fixed arrangement (the MVTec LOCO analogue).

A light tray with two rows of three recessed slots holds, by rule, washer - red cap -
washer on top and blue block - screw - blue block below. Logical defects break the
rule without any local damage: a part is missing, an extra part lies in the tray, a
part sits outside its slot (misplaced), or two different parts trade places (swapped).
Ground truth follows MVTec LOCO: the region where the rule is broken (an empty slot
is marked where its part should be).
"""

from __future__ import annotations

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


def _part(kind: str, cx: float, cy: float, ang: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, colour HWC, height) of one part; shading comes from its height."""
    y, x = grid(n)
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
        head = np.hypot(qx + 0.065, qy) - 0.034
        sdf = np.minimum(shank, head)
        thread = 0.004 * np.sin(qx * 260) * (shank < 0) * (head > 0)
        h = 0.015 * np.sqrt(np.clip(1 - (qy / 0.017) ** 2, 0, 1)) * (head > 0) + thread \
            + 0.02 * np.sqrt(np.clip(1 - ((np.hypot(qx + 0.065, qy)) / 0.034) ** 2, 0, 1)) * (head <= 0)
        col = np.array([0.62, 0.62, 0.60])
    cover = np.clip(0.5 - sdf * n, 0, 1)
    return cover, np.broadcast_to(col, (n, n, 3)), h * cover


def _tray_base(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = grid(n)
    px, py = x - 0.5, y - 0.5
    body = _rounded_box(px, py, 0.42, 0.28, 0.03)
    tray = np.clip(0.5 - body * n, 0, 1)
    height = 0.03 * smooth_step(0.0, 0.012, -body)
    for sx, sy in SLOTS:
        slot = _rounded_box(x - sx, y - sy, 0.105, 0.115, 0.02)
        height = height - 0.02 * smooth_step(0.0, 0.01, -slot)
    belt = (0.22 + 0.015 * noise(rng, n, (n // 2, 3)))[..., None] * np.array([0.85, 0.9, 1.0])
    plastic = (0.80 + 0.01 * noise(rng, n, 8) + rng.normal(0, 0.01))[..., None] * np.array([0.97, 0.97, 0.95])
    albedo = belt * (1 - tray[..., None]) + plastic * tray[..., None]
    return albedo, height


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
    for kind, cx, cy, ang in parts:
        cover, col, h = _part(kind, cx, cy, ang, n)
        # a soft contact shadow offset to the lower right
        sh = np.roll(cover, (max(1, n // 80), max(1, n // 80)), (0, 1))
        albedo = albedo * (1 - 0.3 * (sh * (1 - cover))[..., None])
        albedo = albedo * (1 - cover[..., None]) + col * cover[..., None]
        height = height * (1 - cover) + (height.max() * 0 + h) * cover + cover * np.where(cover > 0, height, 0) * 0
        obj = np.maximum(obj, cover)
    sc = Scene(n=n, albedo=albedo, object_mask=(obj > 0.5).astype(np.float32))
    sc.height = height
    sc.specular = 0.35
    for kind, cx, cy, ang in marks:
        cover, _, _ = _part(kind, cx, cy, ang, n)
        sc.mask = np.maximum(sc.mask, cover > 0.3)
    return sc, phrase
