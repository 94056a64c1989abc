"""Target masks as the official ``mask/creatMask.py`` draws them (paper step 5), every draw from a torch.Generator.

1. Foreground: the normal image at 256², grey, Otsu threshold (inverted when the top-left pixel
   comes out white), closed with a 15×15 ellipse.
2. Up to 100 tries: 1–3 shapes (rectangle / ellipse / polygon / irregular closed polyline,
   blurred and re-thresholded), each in its own cell of a shuffled 6×6 grid, offset by up to a
   third of a cell, sides 20–30 % of 256 px, ellipses at a random angle, each shape rotated
   with probability 0.5 (the rotation applies to the whole mask drawn so far, as in the code);
   the mask is intersected with the foreground; a try with ≥ 60 % of its area on the
   foreground stops, otherwise the best of the tries is kept.
3. Fallback when nothing lies on the foreground: 10 small rectangles (10–30 px) ∩ foreground.
4. With probability 0.5 an erosion or dilation (50/50) by a 1–5 px square kernel.

**The ignored size ranges.** The code reads each defect's size ranges and rotation flag from
``mvtec.json`` / ``visa.json`` only if the entry has ≥ 3 fields; the shipped entries have two
(``[[0.1, 0.15], [0.1, 0.15]]``), so the 10–15 % ranges are *ignored* and the defaults
20–30 % with rotation always apply. This port draws the defaults, as the code does.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["foreground", "adaptive_mask", "target_masks", "CANVAS", "SIZE_RANGE"]

CANVAS = 256
#: the side range actually used (fraction of 256 px); the JSON's 0.10–0.15 is ignored by the code
SIZE_RANGE = (0.2, 0.3)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Python's ``random.randint`` (both ends included) from a torch generator."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def foreground(image01: torch.Tensor) -> np.ndarray:
    """Step 1: ``[3, H, W]`` in [0, 1] → uint8 ``[256, 256]`` foreground (255) of the normal image."""
    rgb = (image01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    rgb = cv2.resize(rgb, (CANVAS, CANVAS))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    _, th = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if th[0, 0] == 255:
        th = cv2.bitwise_not(th)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    return cv2.morphologyEx(th, cv2.MORPH_CLOSE, kernel)


def _shape(mask: np.ndarray, g: torch.Generator, x: int, y: int, w: int, h: int) -> np.ndarray:
    kind = ("rectangle", "ellipse", "polygon", "irregular")[_randint(g, 0, 3)]
    if kind == "rectangle":
        cv2.rectangle(mask, (x, y), (x + w, y + h), 255, -1)
    elif kind == "ellipse":
        cv2.ellipse(mask, (x + w // 2, y + h // 2), (w // 2, h // 2), _randint(g, 0, 180), 0, 360, 255, -1)
    elif kind == "polygon":
        n = _randint(g, 3, 6)
        cx, cy, rx, ry = x + w // 2, y + h // 2, w // 2, h // 2
        pts = [[cx + rx * math.cos(2 * math.pi * i / n) * _uniform(g, 0.7, 1.3),
                cy + ry * math.sin(2 * math.pi * i / n) * _uniform(g, 0.7, 1.3)] for i in range(n)]
        cv2.fillPoly(mask, [np.array(pts, dtype=np.int32)], 255)
    else:
        tmp = np.zeros_like(mask)
        n = _randint(g, 4, 6)
        pts = np.array([(x + _randint(g, 0, w), y + _randint(g, 0, h)) for _ in range(n)], dtype=np.int32)
        cv2.polylines(tmp, [pts], isClosed=True, color=255, thickness=_randint(g, 2, 5))
        contours, _ = cv2.findContours(tmp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(tmp, contours, -1, 255, -1)
        tmp = cv2.GaussianBlur(tmp, (9, 9), 0)
        _, tmp = cv2.threshold(tmp, 50, 255, cv2.THRESH_BINARY)
        mask = cv2.bitwise_or(mask, tmp)
    return mask


def adaptive_mask(template: np.ndarray, g: torch.Generator, max_attempts: int = 100,
                  size_range: tuple[float, float] = SIZE_RANGE, rotation: bool = True) -> tuple[np.ndarray, int]:
    """Steps 2–4 on a 256² foreground; returns ``(mask uint8 0/255, tries used)``."""
    fg = template == 255
    grid = 6
    cell = CANVAS // grid
    order = torch.randperm(grid * grid, generator=g).tolist()
    positions = [(k // grid, k % grid) for k in order]
    best, best_overlap, tries = None, 0.0, 0
    for _ in range(max_attempts):
        tries += 1
        mask = np.zeros((CANVAS, CANVAS), np.uint8)
        for idx in range(_randint(g, 1, 3)):
            gi, gj = positions[idx]
            x = min(gi * cell + _randint(g, 0, cell // 3), CANVAS - 10)
            y = min(gj * cell + _randint(g, 0, cell // 3), CANVAS - 10)
            w = max(_randint(g, int(size_range[0] * CANVAS), int(size_range[1] * CANVAS)), 8)
            h = max(_randint(g, int(size_range[0] * CANVAS), int(size_range[1] * CANVAS)), 8)
            x, y = max(0, min(x, CANVAS - w)), max(0, min(y, CANVAS - h))
            mask = _shape(mask, g, x, y, w, h)
            if rotation and _uniform(g) > 0.5:
                rot = cv2.getRotationMatrix2D((x + w // 2, y + h // 2), _randint(g, 0, 180), 1.0)
                mask = cv2.warpAffine(mask, rot, (CANVAS, CANVAS), flags=cv2.INTER_NEAREST)
        final = np.where((mask == 255) & fg, 255, 0).astype(np.uint8)
        overlap = np.count_nonzero(final) / max(1, np.count_nonzero(mask))
        if overlap > best_overlap:
            best, best_overlap = final, overlap
        if overlap >= 0.6:
            break
    if best is None or not np.count_nonzero(best):
        best = np.zeros((CANVAS, CANVAS), np.uint8)
        for _ in range(10):
            x, y, w, h = _randint(g, 20, 220), _randint(g, 20, 220), _randint(g, 10, 30), _randint(g, 10, 30)
            cv2.rectangle(best, (x, y), (x + w, y + h), 255, -1)
        best = np.where((best == 255) & fg, 255, 0).astype(np.uint8)
    if _uniform(g) > 0.5:
        k = np.ones((_randint(g, 1, 5),) * 2, np.uint8)
        best = cv2.erode(best, k) if _uniform(g) > 0.5 else cv2.dilate(best, k)
    return best, tries


def target_masks(images01: torch.Tensor, rngs: list[torch.Generator], max_attempts: int = 100
                 ) -> tuple[torch.Tensor, list[int]]:
    """One creatMask mask per image, ``[B, 1, H, W]`` in {0, 1} at the images' size (nearest)."""
    h, w = images01.shape[-2:]
    out, tries = [], []
    for img, g in zip(images01, rngs):
        m, t = adaptive_mask(foreground(img), g, max_attempts)
        out.append(torch.from_numpy(m.astype(np.float32) / 255.0))
        tries.append(t)
    masks = torch.stack(out)[:, None]
    return (F.interpolate(masks, size=(h, w), mode="nearest") > 0.5).float(), tries
