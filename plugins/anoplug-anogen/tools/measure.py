"""The README's grid and numbers from the shipped checkpoints: before/after, seconds per image, mask precision.

For each shipped category and each of its defect types, on held-out normal toy images (train
split) with the default (paper) sampling — DDIM 50, η 0, CFG 10, a drawn box:

- the grid: a real shot (what the vector learned from), the normal image, AnoGen's output, the
  same run with the *untrained* vector (the init word "defect": what the inversion changed), the
  box label over the output, and the refined mask (box ∧ change);
- seconds per image at 1 thread (batch 1, after one warm-up image);
- mask precision (``anoplug_metrics.mask_precision``, change = a channel moved by > 2/255) of the
  box label and of the refined mask, with and without ``paste_background``, and the share of box
  pixels that changed visibly (> ``refine_threshold``): the precision of the box as a label.

    OMP_NUM_THREADS=1 python tools/measure.py --out docs --categories capsule,nut,bottle,metal,wood
    OMP_NUM_THREADS=1 python tools/measure.py --out docs --categories fabric,carpet,tile,surface3d,tray --tag _more
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _tile(x: np.ndarray, size: int = 128) -> np.ndarray:
    return np.asarray(Image.fromarray(x).resize((size, size), Image.NEAREST))


def main() -> None:
    from anoplug_anogen.anogen import AnoGen
    from anoplug_metrics.mask_precision import mask_precision

    from anoplug.data.toy import ToyDataset
    from anoplug.types import to_uint8
    from anoplug.viz import grid, overlay, save_png

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--per-type", type=int, default=4, help="normal images per defect type for the numbers")
    ap.add_argument("--categories", default=",".join(AnoGen.pretrained))
    ap.add_argument("--tag", default="", help="suffix of the output files (before_after{tag}.png, measurements{tag}.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, labels, report = [], [], {"per_type": args.per_type, "categories": {}}
    for cat in args.categories.split(","):
        gen = AnoGen.from_pretrained(cat)
        normals = ToyDataset(cat, split="train", size=64, length=48).batch(range(40, 40 + args.per_type))
        shots = ToyDataset(cat, split="test", size=64, length=48).batch(range(48))
        init = gen.vectors.stacked().detach().clone()
        base = gen._embedding(gen.parts).base.weight
        word = base[gen.parts.tokenizer(gen.params.init_word, add_special_tokens=False).input_ids[0]].detach()
        gen.generate(normals[0], seed=0)  # warm-up
        t0 = time.perf_counter()
        gen.generate(normals[0], seed=1)
        sec = time.perf_counter() - t0
        cat_rep = {"seconds_per_image": round(sec, 2), "types": {}}
        for t in gen.types:
            b = normals.with_conditions(defect_type=[t] * len(normals))
            out = gen.generate(b, seed=0)
            gen.params.paste_background = True
            pasted = gen.generate(b, seed=0)
            gen.params.paste_background = False
            with torch.no_grad():
                for r in gen.vectors.rows:
                    r.copy_(word)
            untrained = gen.generate(b, seed=0)
            with torch.no_grad():
                for r, v in zip(gen.vectors.rows, init):
                    r.copy_(v)
            rep = {}
            for name, o in (("box", out), ("box_pasted", pasted)):
                for kind, m in (("box", o.mask), ("refined", o.extras["refined_mask"])):
                    per = mask_precision(o.image, normals.image, m)
                    rep[f"{name}:{kind}"] = {k: round(float(v[torch.isfinite(v)].mean()), 4) for k, v in per.items()}
            rep["box_share_visibly_changed"] = round(float(out.extras["refined_mask"].sum() / out.mask.sum()), 4)
            inside = out.mask.bool().expand_as(out.image)
            rep["mean_abs_change_in_box"] = round(float((out.image - normals.image).abs()[inside].mean()), 4)
            rep["mean_abs_change_in_box_untrained"] = round(float((untrained.image - normals.image).abs()[inside].mean()), 4)
            rep["vector_distance_from_init"] = round(float((init[gen.types.index(t)] - word).norm()), 3)
            cat_rep["types"][t] = rep
            shot = next(i for i, lab in enumerate(shots.label) if lab == t)
            s_img = to_uint8(shots.image[shot:shot + 1])[0]
            s_ov = overlay(s_img, to_uint8(shots.mask[shot:shot + 1])[0, ..., 0] > 127)
            n_img, o_img, u_img = (to_uint8(x.image[:1])[0] for x in (normals, out, untrained))
            box = to_uint8(out.mask[:1])[0, ..., 0] > 127
            ref = to_uint8(out.extras["refined_mask"][:1])[0, ..., 0]
            rows.append([_tile(x) for x in (s_ov, n_img, o_img, u_img, overlay(o_img, box), np.repeat(ref[..., None], 3, -1))])
            labels.append(f"{cat}/{t}")
        report["categories"][cat] = cat_rep
        print(cat, json.dumps(cat_rep), flush=True)
    img = grid(rows, labels, ["real shot", "normal", "AnoGen", "untrained *", "box label", "refined"])
    save_png(img, args.out / f"before_after{args.tag}.png")
    (args.out / f"measurements{args.tag}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
