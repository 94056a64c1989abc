"""Train the shipped AnomalyHybrid checkpoint "surface3d" (the exact recipe of weights/surface3d).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python \
        plugins/anoplug-anomalyhybrid/tools/train_checkpoint.py

Data: the 64 normal images of ``toy:surface3d``'s train split at 64 px with the dataset's own
depth (the rendered height map) and Sobel edges — no anomalies, no masks (the method is
unsupervised). Writes the weights to ``src/anoplug_anomalyhybrid/weights/surface3d``
(``gen.save``), the loss history to ``docs/train_history.json`` and the loss curves to
``docs/loss_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]

#: the shipped run: cpu preset (64 px), batch 4, Adam(2e-4, (0.5, 0.999)), LSGAN + 10 x VGG (on one random
#: 32 px crop per step: the shared 2-core machine allows ~1 s a step), fusion-map sparsity 1.0 (our addition), seed 0
RECIPE = {"preset": "cpu", "batch_size": 4, "vgg_crop": 32, "w_fusion": 1.0, "seed": 0}
STEPS = 1500


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "src" / "anoplug_anomalyhybrid" / "weights" / "surface3d"))
    ap.add_argument("--docs", default=str(HERE / "docs"))
    ap.add_argument("--plot-only", action="store_true", help="redraw docs/loss_curve.png from docs/train_history.json")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads((Path(args.docs) / "train_history.json").read_text())["history"], Path(args.docs))
        return

    from anoplug_anomalyhybrid.anomalyhybrid import AnomalyHybrid

    from anoplug.data import open_dataset
    from anoplug.train.log import print_every

    torch.set_num_threads(args.threads)
    normals = open_dataset("toy:surface3d", split="train", size=64).all()
    gen = AnomalyHybrid(**RECIPE, fit_steps=args.steps)
    t0 = time.perf_counter()
    log = print_every(50)

    def progress(step: int, total: int, row: dict) -> None:
        log(step, total, row)
        if step % 250 == 0 and step < total:
            was = gen.is_fitted
            gen.mark_fitted().save(args.out)  # a usable partial checkpoint while the run goes on
            gen.mark_fitted(was)

    gen.fit(normals, progress=progress)
    seconds = time.perf_counter() - t0
    gen.save(args.out)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "train_history.json").write_text(json.dumps(
        {"recipe": {**RECIPE, "steps": args.steps}, "data": "toy:surface3d@64 train normals (own depth, Sobel edges)",
         "seconds": round(seconds, 1), "s_per_step": round(seconds / args.steps, 3), "torch_threads": args.threads,
         "history": gen.history}, indent=1))
    plot(gen.history, docs)
    print(f"trained {args.steps} steps in {seconds:.0f} s; saved {args.out}")


def plot(history: list[dict], docs: Path) -> None:
    """The loss curves (moving average over 50 steps) of D, G's adversarial term, and G's VGG + fusion terms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anoplug.train.log import plot_history

    panels = {"discriminator (LSGAN)": ["d/adv"], "generator: adversarial": ["g/adv"],
              "generator: 10 x VGG perceptual, fusion sparsity": ["g/vgg", "g/fusion"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    for ax, (title, keys) in zip(axes, panels.items()):
        plot_history(history, keys=[k for k in keys if k in history[-1]], window=50, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.savefig(docs / "loss_curve.png", dpi=90, bbox_inches="tight")


if __name__ == "__main__":
    main()
