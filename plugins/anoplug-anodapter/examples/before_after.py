"""Before/after grid and the measured numbers of the shipped Anodapter checkpoint (README's figures).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python plugins/anoplug-anodapter/examples/before_after.py

Writes ``docs/before_after_bottle.png`` and ``docs/measurements.json``:

- **seconds per image** on CPU at 1 thread: the two stages (cpu preset: 25 DDIM steps each, CFG 7.5),
  batch of 4, after a warm-up call;
- **mask alignment**: for each sample, stage 2 is run twice from the *same* rng state — once on
  the stage-1 mask M, once on an empty mask (the normal images' black mask of training). The
  visible change Δ = mean over RGB of |image(M) − image(∅)| is what the mask caused. Reported:
  the share of Σ Δ inside M against M's share of the image (concentration = ratio of the two),
  and, for changed pixels (Δ > 0.1), the share outside M and their IoU with M.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
TAU = 0.1
N_PER_TYPE = 4


def clone(g: torch.Generator) -> torch.Generator:
    c = torch.Generator()
    c.set_state(g.get_state())
    return c


def main() -> None:
    from anoplug_anodapter.method import Anodapter

    from anoplug.data.toy import ToyDataset

    torch.set_num_threads(1)
    gen = Anodapter.from_pretrained("bottle")
    data = ToyDataset("bottle", split="train", size=64)
    types = gen.types
    n = N_PER_TYPE * len(types)
    batch = data.batch(range(40, 40 + n))  # normals the checkpoint's object-mask source (index 0) is not
    wanted = [t for t in types for _ in range(N_PER_TYPE)]

    # seconds per image (2 stages), batch of 4
    b4 = batch[list(range(4))].with_conditions(defect_type=wanted[:4])
    gen.generate(b4, seed=0)
    t0 = time.perf_counter()
    gen.generate(b4, seed=1)
    s_per_image = (time.perf_counter() - t0) / 4

    # the two stages by hand, with the counterfactual stage 2 on an empty mask
    rngs = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    soft, mask = gen.stage1_mask(wanted, gen._object_hint(batch, 64), rngs)
    twins = [clone(g) for g in rngs]
    image = gen.stage2_image(mask, rngs)
    empty = gen.stage2_image(torch.zeros_like(mask), twins)
    delta = (image - empty).abs().mean(1, keepdim=True)
    rows = []
    for i in range(n):
        m, d = mask[i] > 0, delta[i]
        area = float(m.float().mean())
        if area == 0:
            rows.append({"type": wanted[i], "mask_area": 0.0})
            continue
        share_in = float(d[m].sum() / d.sum())
        changed = d > TAU
        inter, union = float((changed & m).sum()), float((changed | m).sum())
        rows.append({"type": wanted[i], "mask_area": round(area, 4), "delta_share_inside": round(share_in, 4),
                     "concentration": round(share_in / area, 2),
                     "changed_outside_share": round(float((changed & ~m).sum() / changed.sum().clamp_min(1)), 4),
                     "iou_changed_vs_mask": round(inter / max(union, 1), 4),
                     "mean_delta_inside": round(float(d[m].mean()), 4), "mean_delta_outside": round(float(d[~m].mean()), 4)})
    ok = [r for r in rows if r["mask_area"] > 0]

    def mean(key: str) -> float:
        return round(sum(r[key] for r in ok) / max(len(ok), 1), 4)

    summary = {"samples": n, "non_empty_masks": len(ok), "mask_area": mean("mask_area"),
               "delta_share_inside": mean("delta_share_inside"), "concentration": mean("concentration"),
               "changed_outside_share": mean("changed_outside_share"), "iou_changed_vs_mask": mean("iou_changed_vs_mask"),
               "mean_delta_inside": mean("mean_delta_inside"), "mean_delta_outside": mean("mean_delta_outside"),
               "tau": TAU}
    out = {"checkpoint": "bottle", "params": gen.params.model_dump(mode="json"), "type_tokens": gen.type_tokens,
           "s_per_image_cpu_1_thread": round(s_per_image, 3), "alignment": summary, "per_sample": rows}
    docs = HERE / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "measurements.json").write_text(json.dumps(out, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [t * N_PER_TYPE + k for t in range(len(types)) for k in range(2)]
    cols = ["normal (input)", "object mask", "stage 1: mask image", "mask > 200", "stage 2: image",
            "image, empty mask", "change |Δ|", "mask outline"]
    fig, axes = plt.subplots(len(show), len(cols), figsize=(1.6 * len(cols), 1.7 * len(show)))
    hint = gen._object_hint(batch, 64)
    for r, i in enumerate(show):
        panels = [batch.image[i].permute(1, 2, 0), hint[i, 0], soft[i].permute(1, 2, 0), mask[i, 0],
                  image[i].permute(1, 2, 0), empty[i].permute(1, 2, 0), delta[i, 0], image[i].permute(1, 2, 0)]
        for c, p in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(p.clamp(0, 1).numpy(), cmap="gray" if p.ndim == 2 else None, vmin=0, vmax=1 if c != 6 else 0.5)
            if c == 7:
                ax.contour(mask[i, 0].numpy(), levels=[0.5], colors="r", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=7)
        axes[r, 0].set_ylabel(f"{wanted[i]} ({gen.type_tokens[wanted[i]]})", fontsize=7)
    fig.savefig(docs / "before_after_bottle.png", dpi=110, bbox_inches="tight")
    print(json.dumps({k: out[k] for k in ("s_per_image_cpu_1_thread", "alignment")}, indent=1))


if __name__ == "__main__":
    main()
