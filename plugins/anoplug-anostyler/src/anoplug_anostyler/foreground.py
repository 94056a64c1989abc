"""Foreground restriction: keep the meta-shape prior on the object (AnoStyler, ``fg_mask: true``).

The official code prompts SAM ViT-B with the four image corners as *background* points,
inverts SAM's first mask to get the object, and redraws the prior until its intersection
with the object is non-empty. SAM (375 MB, a hub download) is not available offline, so
here the foreground comes from, in order of preference:

1. ``batch.object_mask`` — the toy objects (capsule, nut, bottle, tray) carry an exact one,
   and real datasets may supply one (``fg_source="object_mask"`` or ``"auto"``);
2. a classical stand-in for "SAM with four background corners" (``fg_source="corners"``,
   or ``"auto"`` when the batch has no object mask): the colour of the four corner patches
   is the background model; pixels within a tolerance of it that are *connected to a
   corner* are background, everything else (holes filled, specks removed) is the object.
   When that finds no plausible object (under 1 % or over 95 % of the image) the image is
   a texture and the whole image is the foreground — what the paper does for textures.

Every step that draws a random number takes the sample's ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.ndimage import binary_fill_holes, label

from anoplug_anostyler.shapes import CANVAS, dot, meta_mask, randint

__all__ = ["corner_foreground", "to_canvas", "RestrictedPrior", "restricted_prior"]

#: the stand-in's limits: corner patch side (fraction of the short side), colour tolerance
#: floor, smallest object part kept and the plausible object-area range (fractions of the image).
CORNER_PATCH, MIN_TOLERANCE, MIN_PART, MIN_OBJECT, MAX_OBJECT = 0.06, 0.08, 0.005, 0.01, 0.95


def corner_foreground(image: torch.Tensor) -> np.ndarray:
    """``[H, W]`` uint8 {0, 1} object mask of one ``[3, H, W]`` image from its four corners (see module doc).

    Background model: the mean corner colour μ; tolerance τ = max(0.08, mean + 3·std of the
    corner pixels' distances to μ). Background = the components of {‖I − μ‖ < τ} (4-connected)
    that touch a corner patch.
    """
    img = image.detach().float().cpu().permute(1, 2, 0).numpy()
    h, w = img.shape[:2]
    p = max(2, round(CORNER_PATCH * min(h, w)))
    corners = np.concatenate([img[:p, :p], img[:p, -p:], img[-p:, :p], img[-p:, -p:]]).reshape(-1, 3)
    mu = corners.mean(0)
    dc = np.linalg.norm(corners - mu, axis=1)
    tol = max(MIN_TOLERANCE, float(dc.mean() + 3 * dc.std()))
    near = np.linalg.norm(img - mu, axis=2) < tol
    lab, _ = label(near)
    seeds = np.unique(np.concatenate([lab[:p, :p].ravel(), lab[:p, -p:].ravel(), lab[-p:, :p].ravel(),
                                      lab[-p:, -p:].ravel()]))
    background = np.isin(lab, seeds[seeds > 0])
    fg = binary_fill_holes(~background)
    parts, n = label(fg, structure=np.ones((3, 3)))
    if n:
        areas = np.bincount(parts.ravel())
        keep = np.flatnonzero(areas >= MIN_PART * h * w)
        fg = np.isin(parts, keep[keep > 0])
    frac = float(fg.mean())
    if not MIN_OBJECT <= frac <= MAX_OBJECT:
        return np.ones((h, w), np.uint8)  # no plausible object: a texture, use the whole image
    return fg.astype(np.uint8)


def to_canvas(mask: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resize of a binary mask to the 256² prior canvas (official: ``cv2.INTER_NEAREST``)."""
    m = np.ascontiguousarray(mask.astype(np.uint8))
    if m.shape != (CANVAS, CANVAS):
        m = cv2.resize(m, (CANVAS, CANVAS), interpolation=cv2.INTER_NEAREST)
    return m


@dataclass(frozen=True)
class RestrictedPrior:
    """A prior on the canvas after foreground restriction, with how it was obtained (provenance)."""

    mask: np.ndarray  # uint8 {0, 1}, [CANVAS, CANVAS]
    kinds: tuple[str, ...]
    tries: int
    fallback: bool


def restricted_prior(rng: torch.Generator, foreground: np.ndarray | None, *, m_max: int, alpha: float,
                     max_tries: int = 100) -> RestrictedPrior:
    """Draw priors until one meets the foreground (or until one is non-empty when there is no foreground).

    The official loop is unbounded; this one stops after ``max_tries`` draws (a tiny object)
    and then places a dot prior on a foreground pixel drawn uniformly (*our assumption*), so
    generation always ends. An all-zero foreground counts as "no object found": whole image.
    """
    fg = None if foreground is None or not foreground.any() else foreground.astype(np.uint8)
    for t in range(1, max_tries + 1):
        d = meta_mask(rng, m_max, alpha)
        m = d.mask if fg is None else d.mask & fg
        if m.any():
            return RestrictedPrior(m, d.kinds, t, False)
    where = np.argwhere(fg if fg is not None else np.ones((CANVAS, CANVAS), np.uint8))
    y, x = (int(v) for v in where[randint(rng, 0, len(where))])
    blob = dot(rng)
    ys, xs = np.nonzero(blob)
    if len(ys):  # move the dot's centroid onto the drawn pixel
        blob = np.roll(blob, (y - int(ys.mean()), x - int(xs.mean())), axis=(0, 1))
    m = blob if fg is None else blob & fg
    m[y, x] = 1
    return RestrictedPrior(m, ("dot",), max_tries, True)
