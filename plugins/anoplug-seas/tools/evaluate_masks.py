"""Measure SeaS's RMP masks against the thresholded-difference baseline (IoU with the true changed region).

    OMP_NUM_THREADS=1 .venv/bin/python plugins/anoplug-seas/tools/evaluate_masks.py

Two measurements, both on data the shipped checkpoint never saw:

A. **generated images** — SeaS generates a defect from a held-out normal image (seed i). Its
   *normal twin* is the same model, same seed, same start latent, with the normal prompt
   "a ob1": the true changed region is where the two differ (max channel |Δ| > ``--gt-tau``).
   Baseline: the input/output difference, max channel |output − input normal| > τ.
B. **real held-out defects** — toy test defects of the fitted types (not among the training
   shots); the true changed region is the toy renderer's mask (the pixels the defect process
   painted). RMP: :meth:`SeaS.predict_masks`, the generation's last-3-step path on the real
   image. Baseline: |image − nearest normal training image| > τ.

The baseline gets its best threshold τ on the evaluation set itself (an oracle, in its favour).
Writes ``docs/masks.json`` and ``docs/before_after.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from anoplug_seas.seas import SeaS

from anoplug.data.toy import ToyDataset

HERE = Path(__file__).resolve().parent.parent
TAUS = [0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]


def iou(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    """(mean per-image IoU over images with a non-empty union, pooled IoU over all pixels)."""
    p, g = pred.bool().flatten(1), gt.bool().flatten(1)
    inter, union = (p & g).sum(1).float(), (p | g).sum(1).float()
    keep = union > 0
    per = float((inter[keep] / union[keep]).mean()) if bool(keep.any()) else float("nan")
    return per, float(inter.sum() / union.sum().clamp_min(1))


def precision_recall(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    """Pooled precision (mask pixels that are true change) and recall (true change inside the mask)."""
    p, g = pred.bool(), gt.bool()
    inter = float((p & g).sum())
    return {"precision": inter / max(float(p.sum()), 1.0), "recall": inter / max(float(g.sum()), 1.0)}


def diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().amax(1, keepdim=True)


def best_threshold(d: torch.Tensor, gt: torch.Tensor) -> dict:
    rows = [(tau, *iou((d > tau).float(), gt)) for tau in TAUS]
    tau, per, pooled = max(rows, key=lambda r: r[1])
    return {"tau": tau, "iou": per, "pooled_iou": pooled, **precision_recall((d > tau).float(), gt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="a saved SeaS directory (default: the shipped checkpoint)")
    ap.add_argument("--category", default="carpet")
    ap.add_argument("--n", type=int, default=48, help="generated images (A)")
    ap.add_argument("--per-type", type=int, default=30, help="as in train_seas.py: the test pool per type")
    ap.add_argument("--gt-tau", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = SeaS.from_pretrained(args.weights) if args.weights else SeaS.from_pretrained()
    types = g.types
    # A. generated images and their normal twins
    normals = ToyDataset(args.category, "train", size=64, length=60 + args.n).batch(range(60, 60 + args.n))
    batch = normals.with_conditions(defect_type=[types[i % len(types)] for i in range(args.n)])
    t0 = time.time()
    out = g.generate(batch, seeds=list(range(args.n)))
    per_image = (time.time() - t0) / args.n
    twin_gen = SeaS(**{**g.params.model_dump(), "generate_normals": True})
    twin_gen.parts, twin_gen.types, twin_gen.rmp, twin_gen.plan, twin_gen._fitted = g.parts, types, g.rmp, g.plan, True
    twin = twin_gen.generate(batch, seeds=list(range(args.n)))
    gt_a = (diff(out.image, twin.image) > args.gt_tau).float()
    rmp_a = iou(out.mask, gt_a)
    changed = diff(out.image, normals.image) > 2 / 255  # the mask-precision evaluator's "changed"
    changed_outside = float((changed & ~out.mask.bool()).sum() / changed.sum().clamp_min(1))
    base_a = best_threshold(diff(out.image, normals.image), gt_a)
    # B. real held-out defects
    cycle = len(types) + 1
    test = ToyDataset(args.category, "test", size=64, length=cycle * args.per_type, defects=types)
    held = [i for t in types for i in [j for j in range(cycle * args.per_type) if test.label(j) == t][args.per_type // 3:]]
    real = test.batch(held)
    rmp_b_mask = g.predict_masks(real.image, real.label, seed=0)
    rmp_b = iou(rmp_b_mask, real.mask)
    train_normals = ToyDataset(args.category, "train", size=64, length=60).batch(range(60)).image
    d2 = ((real.image[:, None] - train_normals[None]) ** 2).flatten(2).mean(-1)
    nearest = train_normals[d2.argmin(1)]
    base_b = best_threshold(diff(real.image, nearest), real.mask)
    report = {
        "A_generated": {"n": args.n, "gt": f"max-channel |anomaly - normal twin| > {args.gt_tau}",
                        "gt_fraction": float(gt_a.mean()), "rmp_mask_fraction": float(out.mask.mean()),
                        "rmp": {"iou": rmp_a[0], "pooled_iou": rmp_a[1], "threshold": g.params.mask_threshold,
                                **precision_recall(out.mask, gt_a)},
                        "changed_vs_input_outside_rmp_mask": changed_outside,
                        "baseline_input_difference": base_a},
        "B_real_heldout": {"n": len(held), "gt": "toy defect mask", "gt_fraction": float(real.mask.mean()),
                           "rmp": {"iou": rmp_b[0], "pooled_iou": rmp_b[1], **precision_recall(rmp_b_mask, real.mask)},
                           "baseline_nearest_normal_difference": base_b},
        "seconds_per_image_cpu_1_thread": round(per_image, 3),
        "labels": out.label,
    }
    (HERE / "docs").mkdir(exist_ok=True)
    (HERE / "docs" / "masks.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "labels"}, indent=1))
    grid(normals, out, twin, gt_a, (diff(out.image, normals.image) > base_a["tau"]).float(), HERE / "docs" / "before_after.png")


def grid(normals, out, twin, gt, base, path: Path, k: int = 8) -> None:
    """Rows: input normal | SeaS output | RMP mask | normal twin | true changed region | baseline mask."""
    from anoplug.viz import save_png

    def rgb(m: torch.Tensor) -> torch.Tensor:
        return m.expand(-1, 3, -1, -1)

    overlay = out.image[:k] * (1 - 0.5 * out.mask[:k]) + 0.5 * out.mask[:k] * torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    rows = [normals.image[:k], out.image[:k], overlay, twin.image[:k], rgb(gt[:k]), rgb(base[:k])]
    pad = torch.ones(3, 2, 64)
    cols = [torch.cat([torch.cat([r[i], pad], 1) for r in rows], 1) for i in range(min(k, len(out)))]
    sheet = torch.cat([torch.cat([c, torch.ones(3, c.shape[1], 2)], 2) for c in cols], 2)
    big = torch.nn.functional.interpolate(sheet[None], scale_factor=2, mode="nearest")[0]
    save_png((big.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy(), path)


if __name__ == "__main__":
    main()
