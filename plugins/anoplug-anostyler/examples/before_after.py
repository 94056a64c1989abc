"""The README figures and numbers: AnoStyler for real on CPU (cpu preset, 256², 76 steps, 1 thread).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python plugins/anoplug-anostyler/examples/before_after.py

Four toy normals (train split, index 0, 256 px), each with a defect name: nut/scratch,
capsule/crack, bottle/contamination (objects: prior restricted by ``object_mask``) and
metal/scratch (texture: whole image). Seeds 0-3, the tiny CLIP, VGG16 ``relu4_2``+``relu5_2``.
Writes, under ``docs/``:

- ``before_after.png`` — rows: normal input / generated / mask / |diff| (scaled);
- ``loss_curves.png`` — the five weighted loss terms and the total over the 76 steps;
- ``measure.json`` — per image: CPU seconds (``time.process_time``, 1 thread) and wall
  seconds, mask precision (anoplug-metrics' definitions: leakage outside the mask,
  coverage, IoU of the visibly changed region with the mask), the loss at step 1 and 76,
  and the CLIP alignment cos(CLIP(out) − CLIP(in), T_a − T_n).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DOCS = Path(__file__).resolve().parents[1] / "docs"
CASES = [("nut", "scratch"), ("capsule", "crack"), ("bottle", "contamination"), ("metal", "scratch")]
CHANGE = 2 / 255  # anoplug-metrics' default: a pixel changed if a channel moved by more than this


def _precision(gen: torch.Tensor, src: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    changed = ((gen - src).abs().amax(1, keepdim=True) > CHANGE).float()
    m = (mask >= 0.5).float()
    out_px, in_px = float((1 - m).sum()), float(m.sum())
    inter, union = float((changed * m).sum()), float(((changed + m) > 0).float().sum())
    return {"leakage": float((changed * (1 - m)).sum()) / max(out_px, 1), "coverage": inter / max(in_px, 1),
            "change_iou": inter / max(union, 1), "mask_fraction": in_px / m.numel()}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from anoplug_anostyler.method import Anostyler

    from anoplug.data.toy import ToyDataset

    torch.set_num_threads(1)
    gen = Anostyler(preset="cpu")
    gen.clip, gen.vgg  # noqa: B018 - load the frozen judges before timing
    rows, records, histories = [], [], []
    for seed, (cat, defect) in enumerate(CASES):
        b = ToyDataset(cat, split="train", size=256).batch([0]).with_conditions(prompt=[defect])
        gen.text_embeddings(cat, defect)
        t, c = time.time(), time.process_time()
        out = gen.generate(b, seeds=[seed])
        wall, cpu = time.time() - t, time.process_time() - c
        t_n, t_a = gen.text_embeddings(cat, defect)
        with torch.no_grad():
            align = float(F.cosine_similarity(gen.clip.image(out.image) - gen.clip.image(b.image), t_a - t_n))
        hist = gen.last_histories[0]
        histories.append((f"{cat}/{defect}", hist))
        rec = {"category": cat, "defect": defect, "seed": seed, "label": out.label[0], "cpu_s": round(cpu, 1),
               "wall_s": round(wall, 1), "loss_step1": round(hist[0]["loss"], 1) if hist else None,
               "loss_last": round(hist[-1]["loss"], 1) if hist else None, "clip_alignment": round(align, 4),
               "shapes": out.meta[0]["sample"].get("shapes"), "foreground": out.meta[0]["sample"].get("foreground"),
               **{k: round(v, 4) for k, v in _precision(out.image, b.image, out.mask).items()}}
        records.append(rec)
        print(json.dumps(rec), flush=True)
        diff = (out.image - b.image).abs().amax(1, keepdim=True)
        rows.append([b.image[0], out.image[0], out.mask[0].expand(3, -1, -1),
                     (diff[0] / diff.max().clamp_min(1e-6)).expand(3, -1, -1)])
    grid = torch.cat([torch.cat([r[k] for r in rows], -1) for k in range(4)], -2)
    fig, ax = plt.subplots(figsize=(4 * len(rows), 16.5))
    ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([128 + 256 * i for i in range(len(rows))],
                  [f"{r['category']} + '{r['defect']}'\nseed {r['seed']}, IoU {r['change_iou']:.2f}" for r in records])
    ax.set_yticks([128 + 256 * i for i in range(4)], ["normal input", "generated", "mask", "|diff| (scaled)"])
    ax.set_title("AnoStyler, cpu preset (256², 76 Adam steps, fresh U-Net per image), tiny CLIP + VGG16")
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "before_after.png", dpi=60, bbox_inches="tight")
    plt.close(fig)

    p = gen.params
    weights = {"patch": p.lambda_pdir, "global": p.lambda_gdir, "masked": p.lambda_mclip, "content": p.lambda_c,
               "tv": p.lambda_tv}
    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.4), sharey=False)
    for ax, (name, hist) in zip(axes, histories):
        steps = range(1, len(hist) + 1)
        ax.plot(steps, [h["loss"] for h in hist], "k-", label="total")
        for k, w in weights.items():
            ax.plot(steps, [w * h[k] for h in hist], label=f"{w:g}·{k}")
        ax.set_title(name)
        ax.set_xlabel("Adam step")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "loss_curves.png", dpi=70)
    plt.close(fig)
    summary = {"preset": "cpu", "image_size": 256, "steps": p.steps, "threads": 1, "clip": p.clip_model,
               "cpu_s_per_image_mean": round(sum(r["cpu_s"] for r in records) / len(records), 1),
               "wall_s_per_image_mean": round(sum(r["wall_s"] for r in records) / len(records), 1),
               "images": records}
    (DOCS / "measure.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "images"}))


if __name__ == "__main__":
    main()
