"""Image grids for humans: mask overlays, contact sheets, before/after rows.

Pure numpy + PIL (no matplotlib figure state), so the CLI, widgets and notebooks share
one renderer and the output PNGs are byte-stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anoplug.types import Batch, to_uint8

__all__ = ["overlay", "triplets", "grid", "contact_sheet", "save_png"]

_RED = np.array([255, 40, 40], np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint the masked pixels of a uint8 HWC image red and outline the mask boundary."""
    img = image.astype(np.float32)
    m = mask.astype(bool)
    img[m] = (1 - alpha) * img[m] + alpha * _RED
    if m.any():
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        img[edge] = _RED
    return img.round().astype(np.uint8)


def triplets(normal: Batch, generated: Batch, with_overlay: bool = False) -> list[list[np.ndarray]]:
    """Rows of (normal | anomalous | mask [| overlay]) uint8 tiles, one row per sample."""
    a = to_uint8(normal.image)
    b = to_uint8(generated.image)
    m = to_uint8(generated.mask)[..., 0]
    rows = []
    for i in range(len(generated)):
        row = [a[i], b[i], np.repeat(m[i][..., None], 3, -1)]
        if with_overlay:
            row.append(overlay(b[i], m[i] > 127))
        rows.append(row)
    return rows


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None, pad: int = 4, label_width: int = 0) -> np.ndarray:
    """Assemble uint8 HWC tiles into one image with optional row and column labels."""
    if not rows:
        raise ValueError("grid needs at least one row")
    th, tw = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    lw = label_width or (max((len(s) for s in row_labels), default=0) * 7 + 12 if row_labels else 0)
    top = 18 if col_labels else 0
    H = top + len(rows) * (th + pad) + pad
    W = lw + ncol * (tw + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    for j, name in enumerate(col_labels or []):
        draw.text((lw + pad + j * (tw + pad), 3), name, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = top + pad + i * (th + pad)
        if row_labels:
            draw.text((4, y + th // 2 - 6), row_labels[i], fill=(0, 0, 0), font=font)
        for j, tile in enumerate(row):
            t = tile if tile.shape[:2] == (th, tw) else np.asarray(Image.fromarray(tile).resize((tw, th)))
            canvas.paste(Image.fromarray(t), (lw + pad + j * (tw + pad), y))
    return np.asarray(canvas)


def contact_sheet(results: dict[str, tuple[Batch, Batch]], tile: int = 128) -> np.ndarray:
    """One row per method: normal | anomalous | mask | overlay (first anomalous sample of each)."""
    rows, labels = [], []
    for name, (normal, generated) in results.items():
        anomalous = [i for i, lab in enumerate(generated.label) if lab != "good"] or [0]
        i = anomalous[0]
        row = triplets(normal[i], generated[i], with_overlay=True)[0]
        rows.append([np.asarray(Image.fromarray(t).resize((tile, tile), Image.NEAREST)) for t in row])
        labels.append(name)
    return grid(rows, labels, ["normal", "anomalous", "mask", "overlay"])


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a PNG."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(p)
    return p
