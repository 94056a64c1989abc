"""Train the shipped ComGEN checkpoint "tray" (the exact recipe of weights/tray).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python \
        plugins/anoplug-comgen/tools/train_checkpoint.py

Data: the 64 normal images of ``toy:tray``'s train split at 64 px (with their object masks),
nothing else: ComGEN is unsupervised, the held-out missing / extra / misplaced / swapped
defects of the test split are never seen. Base: the bundled tiny base (frozen). Writes the
weights to ``src/anoplug_comgen/weights/tray`` (``gen.save``), the loss history to
``docs/train_history.json`` and the loss curve to ``docs/loss_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]

#: the shipped run: textual inversion's lr, batch 8; 1500 steps (half of TI's 3000) to fit the CPU budget
RECIPE = {"batch_size": 8, "lr": 5e-3, "seed": 0}
#: generation settings saved with it (they do not change training): the tiny base needs the layout start
#: (init="layout", strength 0.4) and a low guidance; the residual threshold suits its blurry VAE
GENERATION = {"init": "layout", "strength": 0.4, "guidance": 3.0, "residual_threshold": 0.05}
STEPS = 1500


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out", default=str(HERE / "src" / "anoplug_comgen" / "weights" / "tray"))
    ap.add_argument("--docs", default=str(HERE / "docs"))
    args = ap.parse_args()

    from anoplug_comgen.method import Comgen

    from anoplug.data import open_dataset
    from anoplug.train.log import print_every

    torch.set_num_threads(1)
    normals = open_dataset("toy:tray", split="train", size=64).all()
    gen = Comgen(**RECIPE, **GENERATION, fit_steps=args.steps)
    t0 = time.perf_counter()
    gen.fit(normals, progress=print_every(50))
    seconds = time.perf_counter() - t0
    gen.save(args.out)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "train_history.json").write_text(json.dumps(
        {"recipe": {**RECIPE, "steps": args.steps}, "generation": GENERATION, "data": "toy:tray@64 train normals (64 images)",
         "seconds": round(seconds, 1), "s_per_step": round(seconds / args.steps, 3), "torch_threads": 1,
         "history": gen.history}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anoplug.train.log import plot_history

    fig, ax = plt.subplots(figsize=(6, 3.4))
    plot_history(gen.history, keys=["loss"], window=50, ax=ax)
    ax.set_title("MCL: masked noise-prediction loss of the component embeddings")
    ax.set_xlabel("step")
    fig.savefig(docs / "loss_curve.png", dpi=90, bbox_inches="tight")
    print(f"trained {args.steps} steps in {seconds:.0f} s; saved {args.out}")


if __name__ == "__main__":
    main()
