"""Measurements for the README, from the SHIPPED checkpoint (CPU, one thread): writes ``docs/measurements.json``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-sdgan/tools/measure.py

1. **Derived-mask study.** SDGAN outputs no mask; ours is |G(x) − x| (channel max) > τ, opened
   with radius r. Two measurements:

   a. *Where the truth is known*: the other half of the cycle. G_dn removes defects from the
      held-out real fabric defects, whose true masks we have; the mask derived from
      |G_dn(x_d) − x_d| at several τ is compared with the true defect mask (precision, recall,
      IoU). This measures how well a thresholded difference of *this* translator pair localises
      a real defect.
   b. *Against the thresholded-difference definition itself*, on G_nd's translations of the
      held-out normals: for each level t, C_t = {pixels with |G_nd(x) − x| > t}; the shipped mask
      M (τ, r) covers recall_t = |M ∩ C_t| / |C_t| of it and precision_t = |M ∩ C_t| / |M|.
      1 − recall_t is what the threshold (and the opening) discard of the change at level t;
      it is what the mask-precision evaluator's ``leakage`` counts on the raw translation.
2. **Speed**: s/step of the cpu preset (from the training record) and of the paper preset
   (3 steps at 256², batch 1), and seconds per generated image (input 256 px, batch 16).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
LEVELS = (2 / 255, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def _pr(mask: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    inter = float((mask * truth).sum())
    return {"precision": round(inter / max(float(mask.sum()), 1.0), 4), "recall": round(inter / max(float(truth.sum()), 1.0), 4),
            "iou": round(inter / max(float(((mask + truth) > 0).sum()), 1.0), 4), "mask_fraction": round(float(mask.mean()), 5)}


def mask_study(gen) -> dict:
    from anoplug_asbench.bench import split_shots
    from anoplug_sdgan.sdgan import derive_mask

    from anoplug.data import open_dataset

    side, p = gen.params.sizes()["resolution"], gen.params
    test = open_dataset("toy:fabric", split="test", size=side).all()
    _, held = split_shots(test.label)
    held_defects = [i for i in held if test.label[i] != "good"]
    d = test[held_defects]
    with torch.no_grad():
        cleaned = ((gen.G["dn"](d.image * 2 - 1) + 1) / 2).clamp(0, 1)
    truth = (d.mask >= 0.5).float()
    known = {f"{t:.3f}": _pr(derive_mask(d.image, cleaned, t, p.mask_open), truth) for t in LEVELS}
    goods = test[[i for i in held if test.label[i] == "good"]]
    normals = open_dataset("toy:fabric", split="train", size=side).all()
    x = torch.cat([goods.image, normals.image])
    y = gen.translate(x)
    mask = derive_mask(x, y, p.mask_threshold, p.mask_open)
    change = (y - x).abs().amax(1, keepdim=True)
    against = {}
    for t in LEVELS:
        c = (change > t).float()
        inter = float((mask * c).sum())
        against[f"{t:.3f}"] = {"changed_fraction": round(float(c.mean()), 5),
                               "recall_of_change": round(inter / max(float(c.sum()), 1.0), 4),
                               "precision": round(inter / max(float(mask.sum()), 1.0), 4)}
    return {"threshold": p.mask_threshold, "open_radius": p.mask_open,
            "known_truth_G_dn_on_held_out_defects": {"n": len(d), "true_mask_fraction": round(float(truth.mean()), 5),
                                                    "by_threshold": known},
            "G_nd_on_normals_vs_thresholded_difference": {"n": len(x), "mask_fraction": round(float(mask.mean()), 5),
                                                         "empty_masks": int((mask.flatten(1).sum(1) == 0).sum()),
                                                         "by_level": against,
                                                         "mean_abs_change": round(float((y - x).abs().mean()), 4)}}


def speed(gen) -> dict:
    from anoplug_sdgan.sdgan import SDGAN

    from anoplug.data import open_dataset
    from anoplug.testing import make_toy_anomalies, make_toy_batch

    record = json.loads((HERE / "docs" / "train_history.json").read_text())
    paper = SDGAN(preset="paper", batch_size=1)
    t0 = time.perf_counter()
    paper.fit(make_toy_batch(2, 256, seed=1), make_toy_anomalies(2, 256), steps=1)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    paper.fit(make_toy_batch(2, 256, seed=1), make_toy_anomalies(2, 256), steps=3)
    paper_s = (time.perf_counter() - t0) / 3
    params = {k: sum(t.numel() for t in m.parameters()) for k, m in paper.modules().items()}
    b = open_dataset("toy:fabric", split="train", size=256).batch(range(16))
    gen.generate(b[:2], seed=0)
    t0 = time.perf_counter()
    gen.generate(b, seed=0)
    per_image = (time.perf_counter() - t0) / len(b)
    cpu_params = {k: sum(t.numel() for t in m.parameters()) for k, m in gen.modules().items()}
    return {"cpu_preset_seconds_per_step": record["seconds_per_step"], "cpu_preset_batch": record["params"]["batch_size"],
            "cpu_preset_params": cpu_params, "paper_preset_seconds_per_step_batch1_256px": round(paper_s, 2),
            "paper_preset_first_step_seconds": round(warm, 2), "paper_preset_params": params,
            "generate_seconds_per_image_256px_batch16": round(per_image, 4), "threads": torch.get_num_threads()}


def main() -> None:
    from anoplug_sdgan.sdgan import SDGAN

    torch.set_num_threads(1)
    gen = SDGAN.from_pretrained("fabric")
    weights = gen.pretrained_path("fabric")
    out = {"checkpoint_bytes": sum(p.stat().st_size for p in weights.iterdir()), "mask": mask_study(gen),
           "speed": speed(gen)}
    (HERE / "docs" / "measurements.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
