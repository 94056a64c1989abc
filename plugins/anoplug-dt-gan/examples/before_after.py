"""README grids from the SHIPPED "textures" checkpoint: defects by type, and defects transferred between products.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python plugins/anoplug-dt-gan/examples/before_after.py

``docs/before_after.png``: held-out normals (train-split indices 64+, never seen in fit) of the four
products; rows: normal input / generated (style from the mapping network, one z per sample) /
mask / |diff|; each column asks for one defect type, some on a product that never had it.
``docs/transfer.png``: a real defect of one product as *reference* (its style through the style
encoder) put onto a normal of another product; rows: reference / normal / generated / mask / |diff|.
References are test-split indices 168+ (neither in fit nor in the default evaluation split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]

#: (product of the normal, defect type); "*" marks a type the product never had in training
TYPES = [("fabric", "hole"), ("fabric", "thread_break"), ("metal", "scratch"), ("metal", "stain"),
         ("carpet", "contamination"), ("carpet", "scratch*"), ("tile", "crack"), ("tile", "thread_break*")]
#: (product and type of the reference defect, product of the normal it is transferred onto)
TRANSFERS = [(("fabric", "thread_break"), "metal"), (("fabric", "thread_break"), "tile"), (("metal", "scratch"), "fabric"),
             (("metal", "scratch"), "carpet"), (("tile", "crack"), "fabric"), (("tile", "crack"), "metal"),
             (("carpet", "stain"), "tile"), (("metal", "hole"), "carpet")]


def held_out_normal(product: str, k: int, size: int = 64):
    from anoplug.data.toy import ToyDataset

    return ToyDataset(product, "train", size=size, length=64 + 16).batch([64 + k])


def held_out_defect(product: str, defect: str, k: int = 0, size: int = 64):
    from anoplug.data.toy import ToyDataset

    ds = ToyDataset(product, "test", size=size, length=400)
    idx = [i for i in range(168, len(ds)) if ds.label(i) == defect]
    return ds.batch([idx[k]])


def show(rows, titles, path: Path, col_titles) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(col_titles)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.45, len(rows) * 1.5))
    for r, (row, title) in enumerate(zip(rows, titles)):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(row[c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
            if r == 0:
                ax.set_title(col_titles[c], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default=str(HERE / "docs"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from anoplug_dt_gan.dtgan import DTGAN

    from anoplug.types import Batch

    gen = DTGAN.from_pretrained("textures")
    docs = Path(args.docs)
    facts: dict = {"checkpoint": "textures", "seed": args.seed}

    # 1. by defect type (mapping network, z per sample)
    x = Batch.cat([held_out_normal(p, k) for k, (p, _) in enumerate(TYPES)])
    asked = [t.rstrip("*") for _, t in TYPES]
    out = gen.generate(x.with_conditions(defect_type=asked), seed=args.seed)
    diff = (out.image - x.image).abs().amax(1, keepdim=True).expand(-1, 3, -1, -1) * 3
    show([x.image, out.image, out.mask.expand(-1, 3, -1, -1), diff],
         ["normal input", "generated", "mask", "|diff| ×3"], docs / "before_after.png",
         [f"{p}\n{t}" for p, t in TYPES])
    facts["before_after"] = {"columns": [f"{p}/{t}" for p, t in TYPES], "labels": out.label,
                             "mask_area": [round(float(m.mean()), 4) for m in out.mask]}

    # 2. reference transfer across products (style encoder on the reference)
    refs = Batch.cat([held_out_defect(p, t, k % 2) for k, ((p, t), _) in enumerate(TRANSFERS)])
    tgt = Batch.cat([held_out_normal(q, 8 + k) for k, (_, q) in enumerate(TRANSFERS)])
    asked = [t for (_, t), _ in TRANSFERS]
    cond = tgt.with_conditions(defect_type=asked, references=refs.image[:, None], reference_masks=refs.mask[:, None])
    moved = gen.generate(cond, seed=args.seed)
    diff = (moved.image - tgt.image).abs().amax(1, keepdim=True).expand(-1, 3, -1, -1) * 3
    show([refs.image, tgt.image, moved.image, moved.mask.expand(-1, 3, -1, -1), diff],
         ["reference", "normal input", "generated", "mask", "|diff| ×3"], docs / "transfer.png",
         [f"{p} {t}\n→ {q}" for (p, t), q in TRANSFERS])
    facts["transfer"] = {"columns": [f"{p}/{t} -> {q}" for (p, t), q in TRANSFERS], "labels": moved.label,
                         "mask_area": [round(float(m.mean()), 4) for m in moved.mask]}
    (docs / "before_after.json").write_text(json.dumps(facts, indent=2))
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
