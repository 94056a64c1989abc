"""README figures from the SHIPPED ``fabric`` checkpoint.

    OMP_NUM_THREADS=1 .venv/bin/python plugins/anoplug-eid-gan/examples/before_after.py \\
        [--ablation /tmp/eid-gan-no-penalty]

``docs/before_after.png``: rows normal input / generated / mask / |diff| (×3) on held-out toy:fabric
normals generated at 256² (the CLI's default size; shown at 160²), no condition (each outlier goes to the place of a
training outlier drawn per sample). ``docs/instances.png``: whole generated instances
(``output="instance"``) of the shipped model, of the λ = 0 ablation if given, and real training
defects, at the model's 64², with the crop region outlined.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parents[1]


def _tiles(x: torch.Tensor, side: int = 0) -> list[np.ndarray]:
    """uint8 HWC tiles, area-downscaled to ``side`` if given (keeps the README image small)."""
    if side and x.shape[-1] != side:
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="area")
    return [(t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for t in x]


def before_after(gen, n: int, size: int, out: Path) -> None:
    from anoplug.data.toy import ToyDataset
    from anoplug.viz import grid, save_png

    normals = ToyDataset("fabric", "train", size=size, length=64).batch(range(56, 56 + n))  # not the CLI's first ones
    res = gen.generate(normals, seed=0)
    diff = ((res.image - normals.image).abs() * 3).clamp(0, 1)
    rows = [_tiles(t, 160) for t in (normals.image, res.image, res.mask.expand(-1, 3, -1, -1), diff)]
    save_png(grid(rows, row_labels=["normal input", "generated", "mask", "|diff| x3"]), out)
    print(f"wrote {out}: labels {res.label}, mask px {[int(m.sum()) for m in res.mask]}")


def instances(models: dict, real: torch.Tensor, real_masks: torch.Tensor, out: Path, n: int = 8) -> None:
    from anoplug.testing import make_toy_batch
    from anoplug.viz import grid, save_png

    rows, labels = [], []
    for name, gen in models.items():
        gen.params.output = "instance"
        res = gen.generate(make_toy_batch(n, 64), seeds=list(range(n)))
        gen.params.output = "paste"
        rows.append(_outlined(res.image, res.mask))
        labels.append(name)
    rows.append(_outlined(real[:n], real_masks[:n]))
    labels.append("real training defects")
    save_png(grid([[np.kron(t, np.ones((3, 3, 1), dtype=np.uint8)) for t in r] for r in rows], row_labels=labels), out)
    print(f"wrote {out}")


def _outlined(img: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    """The image with the mask's bounding box drawn in red (one pixel outside it)."""
    from anoplug_eid_gan.penalty import mask_boxes

    out = img.clone()
    for i in range(len(img)):
        if not bool(mask[i].any()):
            continue
        y0, x0, y1, x1 = (int(v) for v in mask_boxes(mask[i:i + 1])[0])
        y0, x0, y1, x1 = max(y0 - 1, 0), max(x0 - 1, 0), min(y1, img.shape[-2] - 1), min(x1, img.shape[-1] - 1)
        red = torch.tensor([1.0, 0.0, 0.0])[:, None]
        out[i, :, y0, x0:x1 + 1] = red
        out[i, :, y1, x0:x1 + 1] = red
        out[i, :, y0:y1 + 1, x0] = red
        out[i, :, y0:y1 + 1, x1] = red
    return _tiles(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ablation", default="", help="directory of the λ = 0 model (tools/train_checkpoint.py)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import sys

    from anoplug_eid_gan.eidgan import EIDGAN

    sys.path.insert(0, str(HERE / "tools"))
    from train_checkpoint import training_defects

    gen = EIDGAN.from_pretrained("fabric")
    before_after(gen, args.n, args.size, HERE / "docs" / "before_after.png")
    models = {"EID-GAN (shipped)": gen}
    if args.ablation:
        models["same, penalty weight 0"] = EIDGAN.load(args.ablation)
    d = training_defects()
    keep = [i for i in range(len(d)) if d.label[i] in set(gen.outlier_labels) and float(d.mask[i].mean()) <= 0.01]
    instances(models, d.image[keep], d.mask[keep], HERE / "docs" / "instances.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
