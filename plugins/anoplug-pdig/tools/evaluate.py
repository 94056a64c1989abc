"""Measure the shipped checkpoint and draw the README's before/after grid (seeded, offline).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python plugins/anoplug-pdig/tools/evaluate.py [--preset cpu]

Prints s/image at 1 thread, mask precision (changed pixels outside the target mask, IoU of the
output mask with the visible change, share of the mask that visibly changed, share of the mask on the
target, target coverage), the boundary gradient with and without
TIDSC's smoothing, and writes ``docs/grid.png`` (rows: input, output, output mask, real defect).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from anoplug_pdig import elcells, tidsc
from anoplug_pdig.method import Pdig
from torchvision.utils import save_image

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--n", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(1)
    g = Pdig.from_pretrained("elcells").with_generation_params(preset=a.preset, **__import__(
        "anoplug_pdig.method", fromlist=["PRESETS"]).PRESETS[a.preset])
    normals = elcells.normals(a.n, split="test", seed=7)
    real = elcells.defects(a.n, split="test", seed=7)
    kinds = [elcells.DEFECTS[i % 3] for i in range(a.n)]
    batch = normals.with_conditions(defect_type=kinds, target_mask=real.mask)  # real test masks as targets
    g.generate(normals[[0]].with_conditions(defect_type=kinds[:1], target_mask=real.mask[:1]), seed=0)  # warm-up
    t0 = time.time()
    out = g.generate(batch, seed=0)
    per_image = (time.time() - t0) / a.n
    changed = ((out.image - normals.image).abs().mean(1, keepdim=True) > 2 / 255).float()
    target = real.mask
    outside = float((changed * (1 - target)).sum() / changed.sum().clamp_min(1))
    iou = float((changed * out.mask).sum() / ((changed + out.mask) > 0).float().sum().clamp_min(1))
    coverage = float((changed * target).sum() / target.sum().clamp_min(1))
    precision = float((changed * out.mask).sum() / out.mask.sum().clamp_min(1))  # mask pixels that changed
    in_target = float((target * out.mask).sum() / out.mask.sum().clamp_min(1))  # mask pixels on the target
    plain = g.with_generation_params(tidsc_iterations=0).generate(batch, seed=0)
    region = torch.nn.functional.max_pool2d(target, 2 * g.params.region_dilation + 1, stride=1,
                                            padding=g.params.region_dilation)
    res = {"preset": a.preset, "steps": g.params.steps, "s_per_image_1thread": round(per_image, 2),
           "changed_outside_target_share": round(outside, 3), "iou_mask_vs_visible_change": round(iou, 3),
           "target_coverage": round(coverage, 3), "mask_precision_visible_change": round(precision, 3),
           "mask_share_on_target": round(in_target, 3),
           "boundary_grad_with_tidsc": round(tidsc.boundary_gradient(out.image, region), 4),
           "boundary_grad_without_tidsc": round(tidsc.boundary_gradient(plain.image, region), 4),
           "boundary_grad_input": round(tidsc.boundary_gradient(normals.image, region), 4)}
    print(json.dumps(res, indent=1))
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / f"measured_{a.preset}.json").write_text(json.dumps(res, indent=1))
    rows = torch.cat([normals.image, out.image, out.mask.expand(-1, 3, -1, -1), real.image])
    big = torch.nn.functional.interpolate(rows, scale_factor=2, mode="nearest")
    save_image(big, ROOT / "docs" / "grid.png", nrow=a.n, padding=2, pad_value=1.0)


if __name__ == "__main__":
    main()
