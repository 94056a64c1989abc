"""Measure the shipped checkpoint: memorisation, the paper's rebalancing, the mask extension, speed; draw the figures.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python plugins/anoplug-glass-ddpm/tools/evaluate.py

Everything comes from ``GlassDDPM.from_pretrained("bottle")`` and the fixed toy splits of
tools/common.py; seeds are fixed, so a re-run gives the same numbers (CPU). Writes to docs/:

- ``memorisation.json`` / ``memorisation.png``: nearest-training-defect distances of 60 generated
  images against the training set's own leave-one-out distances;
- ``rebalance.json``: the small classifier's accuracy / precision / recall / F1 / AUC on the
  held-out set, trained on 200 good + 60 real defects, then with the 60 generated defects added
  (and, as a control, with the 60 real defects repeated instead), 5 seeds each;
- ``derived_mask.json``: the nearest-normal mask rule (extension) on real defects, whose true
  masks are known (IoU, precision, recall per type), and its mask area on generated images;
- ``speed.json``: seconds per image on CPU at 1 thread;
- ``samples.png``: generated images, their nearest training defect, and the derived masks.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tools"))
N_GENERATED = 60  # the paper generated 60


def _iou_rows(mask: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    m, t = mask.bool(), truth.bool()
    inter = (m & t).sum((1, 2, 3)).float()
    union = (m | t).sum((1, 2, 3)).float().clamp(min=1)
    prec = inter / m.sum((1, 2, 3)).float().clamp(min=1)
    rec = inter / t.sum((1, 2, 3)).float().clamp(min=1)
    return {"iou": round(float((inter / union).mean()), 4), "precision": round(float(prec.mean()), 4),
            "recall": round(float(rec.mean()), 4), "n": int(len(m))}


def main() -> None:
    from anoplug_glass_ddpm.derived_mask import nearest_normal_mask
    from anoplug_glass_ddpm.glass_ddpm import GlassDDPM
    from anoplug_glass_ddpm.memorisation import memorisation_check
    from anoplug_glass_ddpm.rebalance import rebalancing_experiment
    from common import DEFECTS, ddpm_defects, test_set, train_good

    from anoplug.types import GOOD, Batch

    torch.set_num_threads(1)
    docs = HERE / "docs"
    gen = GlassDDPM.from_pretrained("bottle")
    defects, good, test = ddpm_defects(), train_good(), test_set()

    # speed: one image, then a batch of 16, at the checkpoint's 32 px and 50 DDPM steps
    speed = {"torch_threads": 1, "sample_steps": gen.params.arch()["sample_steps"], "resolution": gen.resolution}
    for n in (1, 16):
        t0 = time.perf_counter()
        gen.generate(good[:n], seed=123)
        speed[f"s_per_image_batch{n}"] = round((time.perf_counter() - t0) / n, 3)
    (docs / "speed.json").write_text(json.dumps(speed, indent=1))
    print("speed", speed, flush=True)

    # the generated defects (input normals only set the count and size)
    out = gen.generate(good[:N_GENERATED], seed=0)
    generated = out.image

    # memorisation
    rep = memorisation_check(generated, defects.image)
    mem = {"what": "RMS pixel distance in [0,1] at 32 px; generated -> nearest of the 60 training defects, and "
                   "each training defect -> its nearest other one (leave-one-out)", **rep.summary(),
           "normals_leave_one_out_median": round(float(memorisation_check(good.image[:60], good.image[:60])
                                                      .train_leave_one_out.median()), 4)}
    (docs / "memorisation.json").write_text(json.dumps(mem, indent=1))
    print("memorisation", mem, flush=True)

    # the paper's use: rebalancing, plus naive oversampling as a control
    test_labels = torch.tensor([0.0 if lab == GOOD else 1.0 for lab in test.label])
    reb = rebalancing_experiment(good.image, defects.image, generated, test.image, test_labels)
    control = rebalancing_experiment(good.image, defects.image, defects.image, test.image, test_labels)
    reb["with_real_defects_repeated"] = control["with"]
    reb["data"] = {"train": "200 good + 60 real defective toy:bottle @32 px", "generated": f"{N_GENERATED} from the "
                   "shipped checkpoint (seed 0)", "test": "held out: 100 good + 99 defective (33 per type)"}
    (docs / "rebalance.json").write_text(json.dumps(reb, indent=1))
    for k in ("without", "with", "with_real_defects_repeated"):
        print(k, {m: v["mean"] for m, v in reb[k]["summary"].items()}, flush=True)

    # the mask extension, calibrated on real defects (true masks known) against the checkpoint's bank
    bank = gen.normal_bank.float() / 255
    dm = {"rule": f"max-channel |blur(x) - blur(nearest normal)| > {gen.params.mask_threshold} "
                  f"(sigma {gen.params.mask_sigma} px), bank of {len(bank)} normals"}
    held = Batch.cat([test[[i for i, lab in enumerate(test.label) if lab == d]] for d in DEFECTS])
    for d in (*DEFECTS, "all"):
        part = held if d == "all" else held[[i for i, lab in enumerate(held.label) if lab == d]]
        m, _ = nearest_normal_mask(part.image, bank, threshold=gen.params.mask_threshold, sigma=gen.params.mask_sigma)
        dm[f"real_{d}"] = _iou_rows(m, part.mask)
    gm, _ = nearest_normal_mask(generated, bank, threshold=gen.params.mask_threshold, sigma=gen.params.mask_sigma)
    gn, _ = nearest_normal_mask(test.image[:100], bank, threshold=gen.params.mask_threshold, sigma=gen.params.mask_sigma)
    dm["generated_mask_area"] = round(float(gm.mean()), 4)
    dm["real_defect_true_mask_area"] = round(float(held.mask.mean()), 4)
    dm["good_images_mask_area"] = round(float(gn.mean()), 4)
    (docs / "derived_mask.json").write_text(json.dumps(dm, indent=1))
    print("derived mask", dm, flush=True)

    _figures(docs, good.image[:N_GENERATED], generated, defects, rep, gm, mem)


def _figures(docs: Path, inputs: torch.Tensor, generated: torch.Tensor, defects, rep, gmask: torch.Tensor,
             mem: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = 10
    rows = [("input normal (unused)", inputs[:k]), ("generated", generated[:k]),
            ("nearest training defect", defects.image[rep.nearest_train_index[:k]]),
            ("derived mask (extension)", gmask[:k].expand(-1, 3, -1, -1)), ("real training defects", defects.image[:k])]
    fig, axes = plt.subplots(len(rows), k, figsize=(k * 1.3, len(rows) * 1.45))
    for r, (title, ims) in enumerate(rows):
        for c in range(k):
            ax = axes[r, c]
            ax.imshow(ims[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 2:
                ax.set_title(f"d={float(rep.generated_to_train[c]):.3f}", fontsize=7)
        axes[r, 0].set_ylabel(title, fontsize=7)
    fig.suptitle("glass-ddpm 'bottle' (32 px): samples of the shipped checkpoint", fontsize=9)
    fig.savefig(docs / "samples.png", dpi=100, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(rep.train_leave_one_out.numpy(), bins=25, alpha=0.6, label="training defect → nearest other")
    ax.hist(rep.generated_to_train.numpy(), bins=25, alpha=0.6, label="generated → nearest training defect")
    ax.axvline(rep.threshold, color="k", ls="--", lw=1, label=f"copy threshold {rep.threshold:.3f}")
    ax.set_xlabel("RMS pixel distance (32 px, [0,1])")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    ax.set_title(f"memorisation: {mem['n_flagged']}/{mem['n_generated']} generated flagged", fontsize=9)
    fig.savefig(docs / "memorisation.png", dpi=90, bbox_inches="tight")


if __name__ == "__main__":
    main()
