"""Train the shipped Anodapter checkpoint "bottle" (the exact recipe of weights/bottle).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python \
        plugins/anoplug-anodapter/tools/train_checkpoint.py --steps 300

The shipped weights were trained with 300 steps (``docs/train_history.json`` records
``steps: 300`` and 294 s at 1 thread; ``config.json`` ``fit_steps: 300``), a tenth of the cpu
preset's own ``fit_steps`` (3000); the default below is the shipped 300.

Data: ``toy:bottle`` at 64 px — the 64 normals of its train split (up to 8 normal slots per
epoch, as the official ``--num_normal_limit 8``; the class object mask is the first normal's
``object_mask``) and the 36 defective images with masks (crack, contamination, hole) of its
test split, read as ``anoplug generate --fit --anomalies toy:bottle`` reads them. Writes the
weights to ``src/anoplug_anodapter/weights/bottle`` (``gen.save``), the loss history to
``docs/train_history.json`` and the loss curves to ``docs/loss_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]

#: the shipped run: the cpu preset (LoRA rank 8 on the UNet attention, full text encoder, two adapters with
#: one residual block per level, AdamW 3e-4 constant, batch 1 → 2), seed 0
RECIPE = {"preset": "cpu", "seed": 0}
STEPS = 300  # the shipped run (config.json fit_steps); the cpu preset's default is 3000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out", default=str(HERE / "src" / "anoplug_anodapter" / "weights" / "bottle"))
    ap.add_argument("--docs", default=str(HERE / "docs"))
    args = ap.parse_args()

    from anoplug_anodapter.method import Anodapter

    from anoplug.data import open_dataset
    from anoplug.train.log import plot_history, print_every

    torch.set_num_threads(1)
    normals = open_dataset("toy:bottle", split="train", size=64).all()
    test = open_dataset("toy:bottle", split="test", size=64).all()
    anomalies = test[[i for i, lab in enumerate(test.label) if lab != "good"]]
    gen = Anodapter(**RECIPE, fit_steps=args.steps)
    t0 = time.perf_counter()
    gen.fit(normals, anomalies, progress=print_every(50))
    seconds = time.perf_counter() - t0
    gen.save(args.out)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "train_history.json").write_text(json.dumps(
        {"recipe": {**RECIPE, "steps": args.steps}, "data": "toy:bottle@64 train normals + test defects",
         "type_tokens": gen.type_tokens, "seconds": round(seconds, 1), "s_per_step": round(seconds / args.steps, 3),
         "torch_threads": 1, "history": gen.history}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 1, figsize=(7, 3.4))
    plot_history(gen.history, keys=["loss", "image_loss", "mask_loss"], window=50, ax=ax)
    ax.set_title("Anodapter joint loss (toy:bottle, cpu preset)")
    ax.set_xlabel("step")
    fig.savefig(docs / "loss_curve.png", dpi=90, bbox_inches="tight")
    print(f"trained {args.steps} steps in {seconds:.0f} s; saved {args.out}")


if __name__ == "__main__":
    main()
