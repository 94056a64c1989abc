"""Before/after grid, mask precision and speed of AnomalyAny on the committed tiny base (README numbers).

    OMP_NUM_THREADS=1 nice -n 10 python plugins/anoplug-anomalyany/examples/before_after.py \\
        --out plugins/anoplug-anomalyany/docs

For four prompts (two capsule defects, a hole in brushed metal, a stain on wood grain), two toy
normal images each (train split, seed 0), it runs (a) plain img2img from the same noised latent
with the same prompt and guidance but none of AnomalyAny's optimisation (``inner_iterations=0``,
``scale_factor=0``, ``prompt_init_steps=0``), (b) AnomalyAny with the ``cpu`` preset and (c), not a
default, the same with Attend-and-Excite steps 40x the official ones (``BOOST``). It
writes ``before_after.png`` and ``measurements.json``: seconds per image (process CPU time and
wall time, one thread, batch 1), the mask numbers of :func:`anoplug_anomalyany.masks.mask_precision`,
the tiny CLIP's distance of each output to the detailed prompt, and the share of outputs the tiny
CLIP's zero-shot classifier calls the prompted defect.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

CASES = (  # (category, prompt, detailed prompt, toy defect label)
    ("capsule", "a capsule with a crack", "a jagged dark crack in a capsule", "crack"),
    ("capsule", "a capsule with a hole", "a ragged hole in a capsule", "hole"),
    ("metal", "brushed metal with a hole", "a ragged hole in brushed metal", "hole"),
    ("wood", "wood grain with a stain", "an orange rust stain on wood grain", "stain"),
)
PLAIN = {"inner_iterations": 0, "scale_factor": 0.0, "prompt_init_steps": 0, "clip_weight": 0.0}
#: not a default: A&E steps 40x the official ones, to show on the tiny base (near-uniform attention) what they push
BOOST = {"scale_factor": 2000.0, "attention_weight": 20.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-case", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import numpy as np
    from anoplug_anomalyany.anomalyany import AnomalyAny
    from anoplug_anomalyany.clip_loss import load_judge
    from anoplug_anomalyany.masks import mask_precision

    from anoplug import viz
    from anoplug.data import open_dataset
    from anoplug.zoo.clip import toy_defect_prompts, zero_shot

    def tile(t: torch.Tensor, scale: int = 2) -> np.ndarray:
        """A [3, H, W] tensor in [0, 1] as an uint8 HWC tile, nearest-upscaled for the README."""
        a = (t.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        return np.kron(a, np.ones((scale, scale, 1), dtype=np.uint8))

    judge = load_judge("tiny")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols: dict[str, list] = {k: [] for k in ("input", "plain", "anomalyany", "diff", "attention", "mask", "boost")}
    rows, timings = [], []
    for category, prompt, detailed, label in CASES:
        normals = open_dataset(f"toy:{category}", split="train", size=64).all()[: args.per_case]
        batch = normals.with_conditions(prompt=[prompt] * len(normals))
        gen = AnomalyAny(preset=args.preset, detailed_prompt=detailed)
        plain = AnomalyAny(preset=args.preset, detailed_prompt=detailed, **PLAIN)
        boost = AnomalyAny(preset=args.preset, detailed_prompt=detailed, **BOOST)
        for i in range(len(batch)):  # batch 1: the per-image time
            one = batch[i]
            c0, w0 = time.process_time(), time.perf_counter()
            out = gen.generate(one, seeds=[args.seed + i])
            timings.append({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0})
            base = plain.generate(one, seeds=[args.seed + i])
            boosted = boost.generate(one, seeds=[args.seed + i])
            peak_boost = float(boost.trace["peak_out"][-1][0])
            att, change = gen.trace["attention"], gen.trace["change"]
            feats = judge.text_features([detailed])
            dist = {k: float(judge.distance(b.image, feats)[0]) for k, b in (("input", one), ("plain", base),
                                                                                ("anomalyany", out), ("boost", boosted))}
            zs = {k: zero_shot(judge.model, judge.tokenizer, b.image, toy_defect_prompts(category)).predicted[0]
                  for k, b in (("input", one), ("plain", base), ("anomalyany", out), ("boost", boosted))}
            rows.append({"category": category, "prompt": prompt, "detailed": detailed, "seed": args.seed + i,
                         "label": out.label[0], **{f"mask_{k}": v for k, v in
                                                   mask_precision(out.mask, change, att).items()},
                         "clip_distance": dist, "zero_shot": zs, "prompted_defect": label,
                         "peak_attention_final": float(gen.trace["peak_out"][-1][0]),
                         "peak_attention_final_plain": float(plain.trace["peak_out"][-1][0]),
                         "peak_attention_final_boost": peak_boost})
            cols["input"].append(tile(one.image[0]))
            cols["plain"].append(tile(base.image[0]))
            cols["anomalyany"].append(tile(out.image[0]))
            cols["diff"].append(tile(((out.image[0] - one.image[0]).abs().amax(0, keepdim=True) * 4).expand(3, -1, -1)))
            cols["attention"].append(tile(att[0].expand(3, -1, -1)))
            cols["mask"].append(np.kron(viz.overlay(tile(out.image[0], 1), out.mask[0, 0].numpy()),
                                        np.ones((2, 2, 1), dtype=np.uint8)))
            cols["boost"].append(tile(boosted.image[0]))
            print(json.dumps(rows[-1]), timings[-1], flush=True)

    labels = ["normal input", "img2img, no guidance", "AnomalyAny (cpu)", "|change| x4", "token attention (bin.)",
              "mask (att. & change)", "A&E x40 (not default)"]
    grid = viz.grid([cols[k] for k in cols], row_labels=labels, label_width=170)
    viz.save_png(grid, out_dir / "before_after.png")
    n = len(rows)
    summary = {
        "preset": args.preset, "images": n, "torch_threads": 1,
        "seconds_per_image_cpu": sum(t["cpu_s"] for t in timings) / n,
        "seconds_per_image_wall": sum(t["wall_s"] for t in timings) / n,
        "labelled_anomalous": sum(r["label"] != "good" for r in rows) / n,
        **{k: sum(r[k] for r in rows) / n for k in ("mask_change_outside_mask", "mask_attention_precision",
                                                    "mask_iou_with_change", "mask_mask_area")},
        "clip_distance_mean": {k: sum(r["clip_distance"][k] for r in rows) / n
                               for k in ("input", "plain", "anomalyany", "boost")},
        "peak_attention_final_mean": {k: sum(r[f"peak_attention_final{s}"] for r in rows) / n
                                      for k, s in (("plain", "_plain"), ("anomalyany", ""), ("boost", "_boost"))},
        "zero_shot_prompted_defect": {k: sum(r["zero_shot"][k] == r["prompted_defect"] for r in rows) / n
                                      for k in ("input", "plain", "anomalyany", "boost")},
        "rows": rows, "timings": timings,
    }
    (out_dir / "measurements.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "timings")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
