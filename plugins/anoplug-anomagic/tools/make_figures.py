"""Before/after grid, loss curve and measured numbers of the shipped checkpoint (zero-shot on the held-out "nut").

    OMP_NUM_THREADS=1 python plugins/anoplug-anomagic/tools/make_figures.py

Writes docs/grid.png, docs/loss.png, docs/metrics.json. Seed 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from anoplug_anomagic.method import Anomagic  # noqa: E402
from anoplug_anomagic.retrieval import _concat  # noqa: E402

from anoplug.data.toy import render  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
VISIBLE = 0.05  # mean |RGB| change that counts as a visible change


def main() -> None:
    torch.set_num_threads(1)
    g = Anomagic.from_pretrained()
    log = json.loads((Anomagic.pretrained_path() / "train_log.json").read_text())
    n = 16
    b = _concat([render("nut", "train", i, 0, 64) for i in range(n)])
    defects = ["scratch", "crack", "stain", "contamination"]
    b = b.with_conditions(defect_type=[defects[i % 4] for i in range(n)])
    t = time.time()
    out = g.with_generation_params(max_attempts=4).generate(b, seed=0)
    per_image = (time.time() - t) / n
    attempts = [m["sample"]["attempts"] for m in out.meta]
    acc = [m["sample"]["accepted"] for m in out.meta]
    recon = g.parts.decode(g.parts.encode_image(b.image))
    visible = ((out.image - recon).abs().mean(1, keepdim=True) > VISIBLE)
    visible_src = ((out.image - b.image).abs().mean(1, keepdim=True) > VISIBLE)
    ref, inp = out.mask > 0.5, out.input_mask > 0.5
    tp = (ref & visible).sum().item()
    prec = tp / max(1, ref.sum().item())
    iou = tp / max(1, (ref | visible).sum().item())
    outside = (visible_src & ~inp).sum().item() / max(1, (~inp).sum().item())
    outside_recon = (visible & ~inp).sum().item() / max(1, (~inp).sum().item())
    metrics = {"s_per_image_cpu_1thread_incl_attempts": round(per_image, 3), "images": n,
               "mean_attempts": sum(attempts) / n, "accepted_fraction": sum(acc) / n,
               "refined_mask_precision_vs_visible_change": round(prec, 3),
               "refined_mask_iou_vs_visible_change": round(iou, 3),
               "refined_over_input_mask_area": round(ref.sum().item() / max(1, inp.sum().item()), 3),
               "changed_pixels_outside_input_mask_vs_source": round(outside, 4),
               "changed_pixels_outside_input_mask_vs_vae_reconstruction": round(outside_recon, 4),
               "visible_change_threshold": VISIBLE, "train_wall_s": log["wall_s"], "train_steps": len(log["loss"]),
               "references": [(m["sample"]["defect"], m["sample"]["reference_category"]) for m in out.meta]}
    (DOCS / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    corpus = g.retriever().corpus
    cols = 8
    fig, ax = plt.subplots(5, cols, figsize=(cols * 1.6, 5 * 1.7))
    rows = ["nut (normal)", "reference", "input mask", "generated", "refined mask"]
    for j in range(cols):
        s = out.meta[j]["sample"]
        k = s["reference"]
        imgs = [b.image[j].permute(1, 2, 0), corpus.images[k].permute(1, 2, 0), out.input_mask[j, 0],
                out.image[j].permute(1, 2, 0), out.mask[j, 0]]
        for i, im in enumerate(imgs):
            ax[i, j].imshow(im.numpy(), cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
            ax[i, j].axis("off")
            if i == 1:
                ax[i, j].contour(corpus.masks[k, 0].numpy(), levels=[0.5], colors="r", linewidths=0.6)
                ax[i, j].set_title(f"{s['defect']}\nfrom {s['reference_category']}", fontsize=7)
            if i == 4:
                ax[i, j].set_title(f"q={s['quality']:.2f} {'ok' if s['accepted'] else 'rej'}", fontsize=7)
        for i, r in enumerate(rows):
            ax[i, 0].text(-8, 32, r, fontsize=7, ha="right", va="center", rotation=90)
    fig.tight_layout()
    fig.savefig(DOCS / "grid.png", dpi=110)
    loss = torch.tensor(log["loss"])
    k = 25
    smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, 1).flatten()
    plt.figure(figsize=(5, 3))
    plt.plot(loss.numpy(), alpha=0.3, label="loss (masked ε-MSE)")
    plt.plot(range(k - 1, len(loss)), smooth.numpy(), label=f"mean of {k}")
    plt.xlabel("step")
    plt.legend()
    plt.tight_layout()
    plt.savefig(DOCS / "loss.png", dpi=110)


if __name__ == "__main__":
    main()
