"""Train the shipped DT-GAN checkpoint "textures" (the exact recipe of weights/textures).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python plugins/anoplug-dt-gan/tools/train_checkpoint.py

Data: four toy products at once — fabric, metal, carpet, tile — at 64 px: the 64 normals of each
train split, and the defective images of test-split indices 48 … 48+N_DEFECT_INDICES−1 of each
(with masks and their defect-type labels: hole, stain, contamination on all four; thread_break on
fabric, scratch on metal, crack on tile). Indices 0 … 47 are the default 48-image test split that
``anoplug evaluate --real toy:<cat>`` scores against, so the generator never sees those defects.
Writes the weights to ``src/anoplug_dt_gan/weights/textures`` (``gen.save``), the loss history to
``docs/train_history.json``, the curves to ``docs/loss_curve.png`` and the run's facts to
``docs/train_checkpoint.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
PRODUCTS = ("fabric", "metal", "carpet", "tile")
N_DEFECT_INDICES = 120  # test-split indices 48..167 of each product: 96 of them are defects (a 1-in-5 cycle has "good")

#: the shipped run: cpu preset and StarGAN v2's losses, with three changes for a 15-minute CPU budget:
#: batch 4 (StarGAN v2: 8) and lr 2e-4 (1e-4) for more and larger updates in the steps we can afford, and
#: EMA 0.99 (0.999), because a run this short would otherwise still carry 0.999**600 = 55 % of its first weights
RECIPE = {"preset": "cpu", "batch_size": 4, "lr": 2e-4, "ema_decay": 0.99, "seed": 0}
STEPS = 600


def training_data(size: int = 64):
    """(normals, defects) of the four products, as ``Batch``es with ``meta["category"]``."""
    from anoplug.data.toy import ToyDataset
    from anoplug.types import GOOD, Batch

    normals = Batch.cat([ToyDataset(p, "train", size=size).batch(range(64)) for p in PRODUCTS])
    defects = []
    for p in PRODUCTS:
        ds = ToyDataset(p, "test", size=size, length=48 + N_DEFECT_INDICES)
        defects.append(ds.batch([i for i in range(48, len(ds)) if ds.label(i) != GOOD]))
    return normals, Batch.cat(defects)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out", default=str(HERE / "src" / "anoplug_dt_gan" / "weights" / "textures"))
    ap.add_argument("--docs", default=str(HERE / "docs"))
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from anoplug_dt_gan.dtgan import DTGAN

    from anoplug.train.log import plot_history, print_every

    torch.set_num_threads(1)
    normals, defects = training_data()
    gen = DTGAN(**RECIPE, fit_steps=args.steps)
    t0 = time.perf_counter()
    gen.fit(normals, defects, progress=print_every(50))
    seconds = time.perf_counter() - t0
    gen.save(args.out)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "train_history.json").write_text(json.dumps(gen.history))
    counts = {t: defects.label.count(t) for t in gen.types}
    facts = {"command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python "
                        f"plugins/anoplug-dt-gan/tools/train_checkpoint.py --steps {args.steps}",
             "recipe": {**RECIPE, "fit_steps": args.steps}, "products": list(PRODUCTS), "normals": len(normals),
             "defects": len(defects), "defects_per_type": counts, "defect_indices": [48, 48 + N_DEFECT_INDICES - 1],
             "seconds": round(seconds, 1), "s_per_step": round(seconds / max(args.steps, 1), 3),
             "threads": torch.get_num_threads()}
    (docs / "train_checkpoint.json").write_text(json.dumps(facts, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    plot_history(gen.history, ("d/adv", "d/r1", "g/adv"), window=25, ax=axes[0])
    plot_history(gen.history, ("g/sty", "g/ds", "g/cyc", "g/bg", "g/mask"), window=25, ax=axes[1])
    axes[0].set_title("adversarial terms (D, G) and R1")
    axes[1].set_title("generator terms (weighted)")
    fig.tight_layout()
    fig.savefig(docs / "loss_curve.png", dpi=110)
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
