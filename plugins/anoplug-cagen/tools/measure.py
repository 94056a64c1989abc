"""Measure the shipped CAGEN checkpoint: before/after grid, seconds per image on CPU, mask precision.

Normal images: the toy train split of the checkpoint's category. Target masks: the masks of
real toy defects that were *not* among the fitted shots (test indices from 20 on), one per
defect type and image, generated with that type. Everything is seeded; 1 thread.

    OMP_NUM_THREADS=1 nice -n 10 python plugins/anoplug-cagen/tools/measure.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"


def held_out_masks(category: str, types: list[str], shots: list[str], size: int, per_type: int) -> tuple:
    """``per_type`` real defect masks of each type from the toy test split, none of them a fitted shot."""
    from anoplug.data.toy import ToyDataset

    ds = ToyDataset(category, split="test", size=size, length=96)
    b = ds.batch(range(20, 96))
    masks, labels = [], []
    for t in types:
        idx = [i for i, (lab, m) in enumerate(zip(b.label, b.meta)) if lab == t and m["source"] not in shots][:per_type]
        masks.append(b.mask[idx])
        labels += [t] * len(idx)
    return torch.cat(masks), labels


def precision(gen: torch.Tensor, src: torch.Tensor, mask: torch.Tensor, thr: float) -> dict[str, float]:
    from anoplug_metrics.mask_precision import mask_precision

    per = mask_precision(gen, src, mask, change_threshold=thr)
    return {k: round(float(v[torch.isfinite(v)].mean()), 4) for k, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="metal")
    ap.add_argument("--per-type", type=int, default=4)
    ap.add_argument("--out", type=Path, default=DOCS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from anoplug_cagen.method import Cagen

    from anoplug.data.toy import ToyDataset

    g = Cagen.from_pretrained(args.checkpoint)
    cat = g.object_word
    masks, labels = held_out_masks(cat, g.types, g.shot_sources, 64, args.per_type)
    n = len(labels)
    normals = ToyDataset(cat, split="train", size=64).batch(range(n))
    batch = normals.with_conditions(target_mask=masks, defect_type=labels)
    g.generate(normals[:1].with_conditions(target_mask=masks[:1], defect_type=labels[:1]), seed=0)  # warm-up
    t0 = time.perf_counter()
    out = g.generate(batch, seed=0)
    sec = (time.perf_counter() - t0) / n
    parts = g.parts
    with torch.no_grad():
        recon = parts.decode(parts.encode_image(normals.image))
    inside = masks.bool().expand_as(normals.image)
    diff = (out.image - normals.image).abs()
    res = {"checkpoint": args.checkpoint, "samples": n, "threads": 1, "steps": g.params.steps,
           "guidance": g.params.guidance, "seconds_per_image": round(sec, 3),
           "mean_abs_change_inside": round(float(diff[inside].mean()), 4),
           "mean_abs_change_outside": round(float(diff[~inside].mean()), 4),
           "vae_reconstruction_error_outside": round(float((recon - normals.image).abs()[~inside].mean()), 4),
           "mask_precision_thr_2_255": precision(out.image, normals.image, masks, 2 / 255),
           "mask_precision_thr_0.1": precision(out.image, normals.image, masks, 0.1)}
    # the same samples with the ControlNet switched off (conditioning_scale 0) and with the hint zeroed
    was = g.params
    g.params = was.model_copy(update={"conditioning_scale": 0.0})
    no_cn = g.generate(batch, seed=0)
    g.params = was.model_copy(update={"fusion": "none", "final_fusion": False})
    no_fusion = g.generate(batch, seed=0)
    g.params = was.model_copy(update={"paste_background": True})
    pasted = g.generate(batch, seed=0)
    g.params = was
    res["without_controlnet_mean_abs_change_inside"] = round(float((no_cn.image - normals.image).abs()[inside].mean()), 4)
    res["controlnet_effect_inside"] = round(float((out.image - no_cn.image).abs()[inside].mean()), 4)
    res["controlnet_effect_outside"] = round(float((out.image - no_cn.image).abs()[~inside].mean()), 4)
    res["without_fusion_mean_abs_change_outside"] = round(float((no_fusion.image - normals.image).abs()[~inside].mean()), 4)
    res["paste_background_mask_precision_thr_0.1"] = precision(pasted.image, normals.image, masks, 0.1)
    g.params = was.model_copy(update={**{k: v for k, v in {"steps": 50, "guidance": 7.5}.items()}})
    t0 = time.perf_counter()
    g.generate(batch[:4], seed=0)
    res["seconds_per_image_paper_sampling_50_steps_cfg_7.5"] = round((time.perf_counter() - t0) / 4, 3)
    g.params = was
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measurements.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    grid(normals, masks, out, no_cn, no_fusion, labels, args.out / "before_after.png")


def grid(normals, masks, out, no_cn, no_fusion, labels, png: Path) -> None:
    """Columns: one sample per defect type (two each); rows: normal, mask, CAGEN, |change|, no ControlNet, no fusion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(dict.fromkeys(labels))
    cols = [i for t in types for i in [j for j, lab in enumerate(labels) if lab == t][:2]]
    rows = [("normal (input)", normals.image), ("target mask", masks.expand(-1, 3, -1, -1)), ("CAGEN", out.image),
            ("|change| x3", ((out.image - normals.image).abs() * 3).clamp(0, 1)),
            ("ControlNet off", no_cn.image), ("no latent fusion", no_fusion.image)]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols), 1.7 * len(rows)))
    for r, (name, imgs) in enumerate(rows):
        for c, i in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(imgs[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[i], fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
