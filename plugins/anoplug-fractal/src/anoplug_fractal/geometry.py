"""The patch geometry of FractalAD's ``FAG``: PIL's nearest-neighbour rotation, the mask dilation,
and the object-finding rule of its ``is_findobj`` mode.

``patch.convert("RGBA").rotate(θ, expand=False)`` rotates the square patch about its centre,
counter-clockwise, keeping its size; the alpha channel (255 inside the source square, 0 where
the rotated square leaves the box) becomes the paste mask. PIL evaluates the inverse map in
16.16 fixed point (``affine_fixed`` in ``Geometry.c``); :func:`rotate_index` reproduces that
integer arithmetic, so the footprint and the sampled pixels are PIL's exactly (tested against PIL).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rotate_index", "rotate_square", "dilate", "object_rule_mask", "object_extent", "FRACTALAD_FIND_OBJECT"]

#: MVTec AD classes for which FractalAD's ``run.py`` turns on ``is_findobj`` (patches cut and pasted on the object)
FRACTALAD_FIND_OBJECT = ("capsule", "pill", "screw", "toothbrush", "zipper")


def _fix(v: float) -> int:
    return math.floor(v * 65536.0 + 0.5)


def rotate_index(size: int, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(source flat index ``[size²]``, inside ``[size²]`` bool) of PIL's ``rotate(degrees)`` on a square.

    PIL's matrix: ``cos``/``sin`` of ``−θ`` rounded to 15 digits, centre ``size/2``; output pixel
    ``(x, y)`` reads ``(⌊xin⌋, ⌊yin⌋)`` with ``xin = A2 + x·A0 + y·A1`` (16.16 fixed point, the
    ``+0.5`` pixel-centre offset folded into ``A2``), and is filled with 0 outside ``[0, size)²``.
    """
    ang = -math.radians(degrees)
    a0, a1 = round(math.cos(ang), 15), round(math.sin(ang), 15)
    a3, a4 = round(-math.sin(ang), 15), round(math.cos(ang), 15)
    c = size / 2
    a2 = a0 * -c + a1 * -c + c
    a5 = a3 * -c + a4 * -c + c
    f0, f1, f3, f4 = _fix(a0), _fix(a1), _fix(a3), _fix(a4)
    f2, f5 = _fix(a2 + a0 * 0.5 + a1 * 0.5), _fix(a5 + a3 * 0.5 + a4 * 0.5)
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.int64), torch.arange(size, dtype=torch.int64), indexing="ij")
    xin = f2 + x * f0 + y * f1
    yin = f5 + x * f3 + y * f4
    lim = size << 16
    inside = (xin >= 0) & (xin < lim) & (yin >= 0) & (yin < lim)
    src = ((yin >> 16).clamp(0, size - 1) * size + (xin >> 16).clamp(0, size - 1)).reshape(-1)
    return src, inside.reshape(-1)


def rotate_square(patch: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``[C, s, s]`` as PIL's RGBA ``rotate``: (rotated patch with 0 fill, footprint ``[s, s]`` bool)."""
    s = patch.shape[-1]
    src, inside = rotate_index(s, degrees)
    flat = patch.reshape(patch.shape[0], -1)
    out = torch.where(inside, flat[:, src], torch.zeros((), dtype=patch.dtype))
    return out.reshape(patch.shape), inside.reshape(s, s)


def dilate(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """``cv2.dilate(mask, ones(3, 3), iterations=k)`` of ``[B, 1, H, W]``: a ``(2k+1)²`` square, no growth from the border."""
    if iterations <= 0:
        return mask
    k = 2 * iterations + 1
    return F.max_pool2d(mask, k, stride=1, padding=iterations)


def object_rule_mask(image_u8: np.ndarray) -> np.ndarray:
    """FractalAD's ``OBJ_mask``: uint8 ``[H, W]`` (non-zero = object) from an RGB uint8 ``[H, W, 3]`` image.

    At 256²: grey by OpenCV's *BGR* weights applied to the RGB array (as the official code does),
    5×5 box blur, the mean of the top-left 20×20 corner decides the polarity: a bright background
    (> 128) keeps pixels darker than ``mean − 50``, a dark one pixels brighter than ``mean + 10``;
    then a 5×5 median and a bilinear resize back to the image size.
    """
    import cv2

    h, w = image_u8.shape[:2]
    img = cv2.resize(np.ascontiguousarray(image_u8), (256, 256))
    img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    img = cv2.blur(img, (5, 5))
    mean = cv2.mean(img[0:20, 0:20])[0]
    if mean > 128:
        _, obj = cv2.threshold(img, int(mean) - 50, 255, cv2.THRESH_BINARY_INV)
    else:
        _, obj = cv2.threshold(img, int(mean) + 10, 255, cv2.THRESH_BINARY)
    obj = cv2.medianBlur(obj, 5)
    return cv2.resize(obj, (w, h))


def object_extent(obj: np.ndarray) -> float | None:
    """The shorter side of the minimum-area rectangle of the largest contour (None without a contour)."""
    import cv2

    cnts, _ = cv2.findContours(np.ascontiguousarray(obj), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not cnts:
        return None
    rect = cv2.minAreaRect(max(cnts, key=cv2.contourArea))
    return float(min(rect[1]))
