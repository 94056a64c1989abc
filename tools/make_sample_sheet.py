"""Write the sample sheet of the embedded toy dataset: ``docs/images/toy_sheet.png``.

One row per category: two normal samples, then one sample of each defect type with the
ground-truth mask outlined in red. Deterministic (same bytes on every run).

    .venv/bin/python tools/make_sample_sheet.py [--out docs/images/toy_sheet.png] [--size 256] [--tile 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anoplug import viz
from anoplug.data.toy import CATEGORIES, render_sample
from anoplug.types import GOOD

REPO = Path(__file__).resolve().parents[1]


def tile_for(category: str, index: int, label: str, size: int, tile: int) -> np.ndarray:
    s = render_sample(category, "test", index, seed=0, size=size, label=label)
    img = Image.fromarray((s.image * 255).round().astype(np.uint8)).resize((tile, tile), Image.LANCZOS)
    mask = np.asarray(Image.fromarray((s.mask * 255).astype(np.uint8)).resize((tile, tile), Image.NEAREST)) > 127
    arr = viz.overlay(np.asarray(img), mask, alpha=0.0)  # outline only: the defect itself stays visible
    canvas = Image.fromarray(arr)
    draw = ImageDraw.Draw(canvas)
    text = label.replace("_", " ")
    draw.rectangle((0, tile - 16, 7 * len(text) + 8, tile), fill=(0, 0, 0))
    draw.text((4, tile - 15), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def make_sheet(size: int = 256, tile: int = 128) -> np.ndarray:
    width = 2 + max(len(info["defects"]) for info in CATEGORIES.values())
    rows = []
    for cat, info in CATEGORIES.items():
        labels = [GOOD, GOOD, *info["defects"]]
        row = [tile_for(cat, k, lab, size, tile) for k, lab in enumerate(labels)]
        row += [np.full((tile, tile, 3), 255, np.uint8)] * (width - len(row))
        rows.append(row)
    names = [f"{cat} ({info['kind']})" for cat, info in CATEGORIES.items()]
    return viz.grid(rows, names, ["normal", "normal"] + ["defect (red: ground truth)"] + [""] * (width - 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "toy_sheet.png")
    ap.add_argument("--size", type=int, default=256, help="render size before downscaling to the tile")
    ap.add_argument("--tile", type=int, default=128)
    args = ap.parse_args()
    print(viz.save_png(make_sheet(args.size, args.tile), args.out))


if __name__ == "__main__":
    main()
