"""The README grid from the SHIPPED weights: normal input / generated / derived mask / |diff| (and the raw translation).

Run from the repo root::

    OMP_NUM_THREADS=1 .venv/bin/python plugins/anoplug-sdgan/examples/before_after.py

Inputs are the 8 first *held-out* normals of toy:fabric (the test split's good images, never seen
in training), at 128 px so the composition at a resolution above the model's 64 px is visible.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="fabric", help="shipped checkpoint name or a directory written by save()")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "docs" / "before_after.png")
    args = ap.parse_args()

    import torchvision
    from anoplug_sdgan.sdgan import SDGAN

    from anoplug.data import open_dataset

    gen = SDGAN.from_pretrained(args.weights)
    test = open_dataset("toy:fabric", split="test", size=args.size).all()
    goods = test[[i for i, lab in enumerate(test.label) if lab == "good"][:8]]
    out = gen.generate(goods, seed=args.seed)
    gen.params.compose = False
    raw = gen.generate(goods, seed=args.seed)
    gen.params.compose = True
    diff = (out.image - goods.image).abs().amax(1, keepdim=True)
    rows = [goods.image, out.image, out.mask.expand(-1, 3, -1, -1), (diff / diff.max().clamp(min=1e-6)).expand(-1, 3, -1, -1),
            raw.image]
    grid = torch.cat(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(grid, args.out, nrow=len(goods), padding=2, pad_value=1.0)
    info = {"command": f"python plugins/anoplug-sdgan/examples/before_after.py --weights {args.weights} --size {args.size} "
                       f"--seed {args.seed}",
            "rows": ["held-out normal input", "generated (composed)", "derived mask", "|generated − input| (channel max, "
                     "scaled to its maximum)", "raw translation G_nd(x) upsampled (compose=False)"],
            "labels": out.label, "mask_fraction": [round(float(m.mean()), 4) for m in out.mask],
            "orientations": [s["orientation"] for s in out.samples],
            "max_abs_diff": round(float(diff.max()), 4)}
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(f"wrote {args.out}; mask fraction per image: {info['mask_fraction']}")


if __name__ == "__main__":
    main()
