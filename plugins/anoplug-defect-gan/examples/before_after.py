"""The README grid from the SHIPPED "fabric" checkpoint: normal input / generated / mask / |diff|.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python plugins/anoplug-defect-gan/examples/before_after.py

Columns: the first 8 normals of toy:fabric's train split at 256 px (the CLI's default size),
two per defect type (``conditions.defect_type``), SD maps drawn from the fitted masks, seeds
0-7. Writes ``docs/before_after.png`` and ``docs/before_after.json`` (labels, mask areas).
A second figure, ``docs/control.png``, shows the controls on one normal: the same seed with
each defect type in one user SD map (``conditions.target_mask``), the SD map moved, and two
stacked layers (``layers=2``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _row_images(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.cat(list(r), -1) for r in rows], -2)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from anoplug_defect_gan.defect_gan import DefectGAN

    from anoplug.data import open_dataset

    torch.set_num_threads(1)
    gen = DefectGAN.from_pretrained("fabric")
    normals = open_dataset("toy:fabric", split="train", size=256).all()[:8]
    types = [t for t in gen.types for _ in range(2)]
    out = gen.generate(normals.with_conditions(defect_type=types), seeds=list(range(8)))
    diff = (out.image - normals.image).abs().amax(1, keepdim=True)
    rows = [normals.image, out.image, out.mask.expand(-1, 3, -1, -1), (diff / diff.max().clamp_min(1e-6)).expand(-1, 3, -1, -1)]
    fig, ax = plt.subplots(figsize=(16, 8.4))
    ax.imshow(_row_images(rows).permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([128 + 256 * i for i in range(8)], [f"{t}\nseed {i}" for i, t in enumerate(types)])
    ax.set_yticks([128 + 256 * i for i in range(4)], ["normal input", "generated", "mask", "|diff| (scaled)"])
    ax.set_title("Defect-GAN, shipped 'fabric' checkpoint (64 px model composed onto 256 px inputs)")
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "before_after.png", dpi=80, bbox_inches="tight")
    (DOCS / "before_after.json").write_text(json.dumps(
        [{"seed": i, "asked": types[i], "label": out.label[i], "mask_fraction": round(float(out.mask[i].mean()), 5),
          "max_change_outside_mask": round(float((diff[i] * (1 - out.mask[i])).max()), 4)} for i in range(8)], indent=1))

    # -- the controls on one normal --------------------------------------------------------------
    one = normals[[0]]
    size = 256
    boxes = [(40, 40), (150, 150)]
    cols, names = [one.image], ["input"]
    for t in gen.types:
        m = torch.zeros(1, 1, size, size)
        m[..., 96:160, 96:160] = 1
        o = gen.generate(one.with_conditions(defect_type=[t], target_mask=m), seeds=[0])
        cols.append(o.image)
        names.append(f"{t}\ncentre SD map")
    for y, x in boxes:
        m = torch.zeros(1, 1, size, size)
        m[..., y: y + 64, x: x + 64] = 1
        o = gen.generate(one.with_conditions(defect_type=[gen.types[1]], target_mask=m), seeds=[0])
        cols.append(o.image)
        names.append(f"{gen.types[1]}\nSD map at ({y},{x})")
    stacked = DefectGAN.from_pretrained("fabric")
    stacked.params.layers = 2
    o = stacked.generate(one, seeds=[3])
    cols.append(o.image)
    names.append("layers=2\n" + o.label[0])
    fig, ax = plt.subplots(figsize=(2.1 * len(cols), 2.6))
    ax.imshow(torch.cat([c[0] for c in cols], -1).permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([128 + 256 * i for i in range(len(cols))], names, fontsize=8)
    ax.set_yticks([])
    fig.savefig(DOCS / "control.png", dpi=80, bbox_inches="tight")
    print(f"wrote {DOCS / 'before_after.png'} and {DOCS / 'control.png'}")


if __name__ == "__main__":
    main()
