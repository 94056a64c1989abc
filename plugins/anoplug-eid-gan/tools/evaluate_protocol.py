"""The README's penalty comparison: outlier-crop error and the paper's two-detector k-fold protocol.

    OMP_NUM_THREADS=1 .venv/bin/python plugins/anoplug-eid-gan/tools/evaluate_protocol.py \\
        --ablation /tmp/eid-gan-no-penalty

Compares the shipped ``fabric`` checkpoint with the λ = 0 run of the same recipe (same seed,
steps, data; ``tools/train_checkpoint.py --penalty-weight 0``):

- crop error: mean |crop(G(z)) − outlier| on the training outliers' crop regions of 100 instances;
- :func:`anoplug_eid_gan.protocol.availability_protocol` (k = 3, detectors 1-NN and linear probe) with
  real normals = toy:fabric train (64), real defects = held-out tiny defects (toy:fabric test
  indices 4248 … 5447 of the trained types, mask <= 1 %; disjoint from the GAN's training set and
  from the evaluators' test set), generated = 100 instances (the paper's 100) — and, for our
  paste integration, 100 pasted images (outliers pasted into the normals).

Writes ``docs/protocol.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]


def crop_errors(gen, fake: torch.Tensor, defects) -> float:
    from anoplug_eid_gan.eidgan import prepare_outliers
    from anoplug_eid_gan.penalty import crop_error

    d = prepare_outliers(defects, gen.resolved.resolution, gen.params.max_outlier_area, gen.params.crop_location)
    n = len(fake)
    errs = [crop_error(fake, d["crop_images"][k:k + 1].expand(n, -1, -1, -1), d["crop_masks"][k:k + 1].expand(n, -1, -1, -1),
                       d["crop_boxes"][k:k + 1].expand(n, -1)).mean() for k in range(len(d["labels"]))]
    return float(torch.stack(errs).mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ablation", required=True)
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import sys

    from anoplug_eid_gan import protocol as P
    from anoplug_eid_gan.eidgan import EIDGAN

    from anoplug.data.toy import ToyDataset
    from anoplug.seeding import rngs_for

    sys.path.insert(0, str(HERE / "tools"))
    from train_checkpoint import training_defects

    models = {"shipped": EIDGAN.from_pretrained("fabric"), "no_penalty": EIDGAN.load(args.ablation)}
    types = set(models["shipped"].outlier_labels)
    train_defects = training_defects(types=tuple(sorted(types)))
    normals = ToyDataset("fabric", "train", size=64).all()
    test = ToyDataset("fabric", "test", size=64, length=5448)
    idx = [i for i in range(4248, 5448) if test.label(i) in types]
    held = test.batch(idx)
    held_img = held.image[held.mask.flatten(1).mean(1) <= 0.01]
    report: dict = {"n_generated": args.n, "n_real_normals": len(normals), "n_real_defects": len(held_img),
                    "defect_types": sorted(types), "models": {}}
    for name, gen in models.items():
        fake = gen.instances(rngs_for(range(args.n)))
        pasted = gen.generate(normals[[i % len(normals) for i in range(args.n)]], seeds=list(range(args.n))).image
        row = {"penalty_weight": gen.resolved.penalty_weight, "crop_error": crop_errors(gen, fake, train_defects)}
        for det in ("knn", "linear"):
            for kind, images in (("instances", fake), ("pasted", pasted)):
                r = P.availability_protocol(normals.image, held_img, images, detector=det, k=3, seed=0)
                row[f"{det}_{kind}"] = {k: v for k, v in r.items() if k != "folds"}
        report["models"][name] = row
        print(name, json.dumps(row, indent=1))
    (HERE / "docs" / "protocol.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
