"""Measure the box-size ranges of the toy dataset's defects (the toy counterpart of AnoGen's ``mvtec_range.json``).

AnoGen draws each box with a width and a height uniform in a per-(object, defect) range, as
fractions of the image side. The official ranges for MVTec AD were set by hand; the toy data
has none, so this script measures them: for each (category, defect) it renders ``--per-type``
test samples at 256 px, takes the bounding box of each defect mask, and keeps the 10th and 90th
percentile of the width and height fractions (*our assumption*; the outliers would otherwise set
the range). Every toy entry is marked ``rotate: true`` — in the official table every flag is a
non-empty string, so every box is rotated.

    python tools/toy_box_ranges.py --out src/anoplug_anogen/box_ranges_toy.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def measure(per_type: int, size: int = 256) -> dict[str, dict[str, list]]:
    from anoplug.data.toy import CATEGORIES, label_for, render_sample

    out: dict[str, dict[str, list]] = {}
    for cat, info in CATEGORIES.items():
        out[cat] = {}
        for defect in info["defects"]:
            ws, hs = [], []
            index = 0
            while len(ws) < per_type and index < 2000:
                if label_for(cat, "test", index) == defect:
                    m = render_sample(cat, "test", index, size=size).mask > 0.5
                    if m.any():
                        ys, xs = np.nonzero(m)
                        ws.append((xs.max() - xs.min() + 1) / size)
                        hs.append((ys.max() - ys.min() + 1) / size)
                index += 1
            lo_w, hi_w = np.percentile(ws, [10, 90])
            lo_h, hi_h = np.percentile(hs, [10, 90])
            out[cat][defect] = [[round(float(lo_w), 3), round(float(hi_w), 3)],
                                [round(float(lo_h), 3), round(float(hi_h), 3)], True]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-type", type=int, default=24)
    args = ap.parse_args()
    table = measure(args.per_type)
    args.out.write_text(json.dumps({"source": f"tools/toy_box_ranges.py --per-type {args.per_type} (256 px, "
                                              "10th-90th percentile of the defect masks' bounding boxes)",
                                    "ranges": table}, indent=1) + "\n")
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
