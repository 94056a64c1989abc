"""Train the shipped Defect-GAN checkpoint "fabric" (the exact recipe of weights/fabric).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python \
        plugins/anoplug-defect-gan/tools/train_checkpoint.py

Data: ``toy:fabric`` at 64 px — the 64 normals of its train split and the 38 defective images
(with masks; thread_break, hole, stain, contamination) of its test split, read as
``anoplug generate --fit --anomalies toy:fabric`` reads them. Writes the weights to
``src/anoplug_defect_gan/weights/fabric`` (``gen.save``), the loss history to
``docs/train_history.json`` and the loss curves to ``docs/loss_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]

#: the shipped run: cpu preset, batch 4, Adam(1e-4, (0, 0.9)); EMA 0.99 instead of 0.999 because
#: a run this short would otherwise still carry more than half of the initial weights (0.999**600 = 0.55)
RECIPE = {"preset": "cpu", "batch_size": 4, "ema_decay": 0.99, "seed": 0}
STEPS = 600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out", default=str(HERE / "src" / "anoplug_defect_gan" / "weights" / "fabric"))
    ap.add_argument("--docs", default=str(HERE / "docs"))
    args = ap.parse_args()

    from anoplug_defect_gan.defect_gan import DefectGAN

    from anoplug.data import open_dataset
    from anoplug.train.log import plot_history, print_every

    torch.set_num_threads(1)
    normals = open_dataset("toy:fabric", split="train", size=64).all()
    test = open_dataset("toy:fabric", split="test", size=64).all()
    anomalies = test[[i for i, lab in enumerate(test.label) if lab != "good"]]
    gen = DefectGAN(**RECIPE, fit_steps=args.steps)
    t0 = time.perf_counter()
    gen.fit(normals, anomalies, progress=print_every(50))
    seconds = time.perf_counter() - t0
    gen.save(args.out)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "train_history.json").write_text(json.dumps(
        {"recipe": {**RECIPE, "steps": args.steps}, "data": "toy:fabric@64 train normals + test defects",
         "seconds": round(seconds, 1), "s_per_step": round(seconds / args.steps, 3), "torch_threads": 1,
         "history": gen.history}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"critic": ["d/adv", "d/gp", "d/cls"], "generator: adversarial + class": ["g/adv", "g/cls"],
              "generator: cycles + SD-map terms": ["g/cycle", "g/cycle_mask", "g/rec", "g/vanishing", "g/spatial"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    for ax, (title, keys) in zip(axes, panels.items()):
        plot_history(gen.history, keys=keys, window=25, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.savefig(docs / "loss_curve.png", dpi=90, bbox_inches="tight")
    print(f"trained {args.steps} steps in {seconds:.0f} s; saved {args.out}")


if __name__ == "__main__":
    main()
