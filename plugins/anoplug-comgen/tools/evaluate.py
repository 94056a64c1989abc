"""Measure the shipped ComGEN checkpoint on held-out tray normals and draw the before/after grid.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python plugins/anoplug-comgen/tools/evaluate.py

Inputs: 16 normal trays never trained on (``toy:tray`` train split rendered with seed 1).
For each logical type (``defect_type`` = missing / extra / misplaced / swapped), one sample per
input (seed 0), then per type:

- ``realised``: share of samples with a non-empty mask (label = the type);
- ``iou_component``: IoU of the mask with the changed component's footprint (the removed,
  added, moved or swapped parts, from the sample's record, not dilated) - the "changed region";
- ``cover_component``: share of that footprint inside the mask;
- ``precision_component``: share of the mask on that footprint (mask precision w.r.t. the changed
  component; the mask may also hold the dilation band and the visible edit around the part);
- ``precision_visible``: share of the mask that visibly changed (max channel |Δ| > 0.1);
- ``iou_visible``: IoU of the mask with the visible change (max channel |Δ| > 0.1);
- ``change_in_component``: mean max-channel |Δ| over the footprint (how strongly it was edited);
- ``outside_raw``: with ``paste_background=False`` (the raw generation), the share of visibly
  changed pixels that fall outside the mask (mask precision before the paste);
- ``s_per_image``: wall seconds per image at 1 thread.

Writes ``docs/eval.json`` and ``docs/before_after.png`` (rows: the four types; per sample the
input, the output and the mask; the last column a held-out real defect of that type).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--weights", default="tray")
    ap.add_argument("--docs", default=str(HERE / "docs"))
    ap.add_argument("--override", default="{}", help="JSON of parameters to change for this evaluation")
    args = ap.parse_args()

    from anoplug_comgen.method import DEFECT_TYPES, Comgen

    from anoplug.data import open_dataset

    torch.set_num_threads(1)
    shipped = Comgen.from_pretrained(args.weights)
    params = {**shipped.params.model_dump(), **json.loads(args.override)}

    def make(**kw: object) -> Comgen:
        g = Comgen(**{**params, **kw})
        g.vectors, g.state, g._fitted = shipped.vectors, shipped.state, True
        return g

    gen, raw = make(), make(paste_background=False)
    normals = open_dataset("toy:tray", split="train", size=64, seed=1, length=args.n).all()
    test = open_dataset("toy:tray", split="test", size=64).all()
    report: dict = {"inputs": f"toy:tray train split, seed 1, {args.n} images at 64 px (never trained on)",
                    "params": {k: v for k, v in params.items() if k in json.loads(args.override) or k in
                               ("steps", "guidance", "eta", "residual_threshold", "attention_floor")},
                    "types": {}}
    grid_rows = []
    for kind in DEFECT_TYPES:
        b = normals.with_conditions(defect_type=[kind] * len(normals))
        t0 = time.perf_counter()
        outs = [gen.generate(b[i:i + 8], seeds=list(range(i, min(i + 8, len(b))))) for i in range(0, len(b), 8)]
        seconds = (time.perf_counter() - t0) / len(b)
        image = torch.cat([o.image for o in outs])
        mask = torch.cat([o.mask for o in outs])
        labels = [lab for o in outs for lab in o.label]
        records = [s for o in outs for s in o.samples]
        half = min(8, len(b))
        raw_out = raw.generate(b[:half], seeds=list(range(half)))
        ious, covers, vis, strength, outside, prec, prec_vis = [], [], [], [], [], [], []
        for i in range(len(b)):
            fp = footprint(gen, b, i, records[i])
            m = mask[i, 0] > 0.5
            change = (image[i] - b.image[i]).abs().amax(0)
            seen = change > 0.1
            ious.append(float((m & fp).sum() / (m | fp).sum().clamp_min(1)))
            covers.append(float((m & fp).sum() / fp.sum().clamp_min(1)))
            prec.append(float((m & fp).sum() / m.sum().clamp_min(1)))
            prec_vis.append(float((m & seen).sum() / m.sum().clamp_min(1)))
            vis.append(float((m & seen).sum() / (m | seen).sum().clamp_min(1)))
            strength.append(float(change[fp].mean()) if bool(fp.any()) else 0.0)
            if i < half:
                rc = (raw_out.image[i] - b.image[i]).abs().amax(0) > 0.1
                rm = raw_out.mask[i, 0] > 0.5
                outside.append(float((rc & ~rm).sum() / rc.sum().clamp_min(1)))
        mean = lambda v: round(sum(v) / max(len(v), 1), 3)  # noqa: E731
        report["types"][kind] = {"realised": mean([float(lab == kind) for lab in labels]),
                                 "iou_component": mean(ious), "cover_component": mean(covers),
                                 "precision_component": mean(prec), "precision_visible": mean(prec_vis),
                                 "iou_visible": mean(vis), "change_in_component": mean(strength),
                                 "outside_raw": mean(outside), "s_per_image": round(seconds, 2)}
        print(kind, report["types"][kind], flush=True)
        real = test[[i for i, lab in enumerate(test.label) if lab == kind][0]]
        grid_rows.append((kind, b.image[:4], image[:4], mask[:4], real))
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "eval.json").write_text(json.dumps(report, indent=1))
    draw(grid_rows, docs / "before_after.png")


def footprint(gen, batch, i: int, record: dict) -> torch.Tensor:
    """The changed components' footprints of sample ``i`` (bool ``[H, W]``), without the region's dilation."""
    from anoplug_comgen.method import Comgen

    g = Comgen(**{**gen.params.model_dump(), "region_dilation": 0})
    g.vectors, g.state = gen.vectors, gen.state
    img, fg = g._inputs(batch[[i]], g.parts)
    inst, types = g._parts_of(img[0], fg[0])
    return torch.stack([r[0] for r in g._regions(record, inst, types, img.shape[-1])]).amax(0) > 0.5


def draw(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), 3 * n + 1, figsize=(1.3 * (3 * n + 1), 1.45 * len(rows)))
    for r, (kind, before, after, mask, real) in enumerate(rows):
        for j in range(n):
            for c, (im, title) in enumerate(((before[j], "input"), (after[j], "ComGEN"), (None, "mask"))):
                ax = axes[r, 3 * j + c]
                if im is None:
                    over = after[j].permute(1, 2, 0).clone()
                    over[mask[j, 0] > 0.5] = over[mask[j, 0] > 0.5] * 0.4 + torch.tensor([1.0, 0.0, 1.0]) * 0.6
                    ax.imshow(over.clamp(0, 1).numpy(), interpolation="nearest")
                else:
                    ax.imshow(im.permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=7)
            axes[r, 0].set_ylabel(kind, fontsize=8)
        ax = axes[r, -1]
        ax.imshow(real.image[0].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.set_title("real (held out)", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
