"""Train the shipped ``toy-defects`` checkpoint: the SGA on toy defects (each its own reference), cpu preset, seed 0.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-anomalycontrol/tools/train_toy.py --steps 600

Writes ``src/anoplug_anomalycontrol/weights/toy-defects/`` (config.json, weights.safetensors,
train_log.json) and ``docs/loss.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from anoplug_anomalycontrol.method import PRESETS, AnomalyControl

from anoplug.data.toy import render
from anoplug.types import Batch

HERE = Path(__file__).resolve().parent.parent
CATEGORIES = ("metal", "capsule", "wood", "bottle", "fabric", "nut")


def toy_defects(per_category: int, size: int = 64) -> Batch:
    """The toy test split's defects (with masks and captions) of :data:`CATEGORIES`."""
    parts = [render(c, "test", i, 0, size) for c in CATEGORIES for i in range(per_category)]
    parts = [b for b in parts if b.label[0] != "good" and bool(b.mask.any())]
    return Batch(image=torch.cat([b.image for b in parts]), mask=torch.cat([b.mask for b in parts]),
                 label=[b.label[0] for b in parts], meta=[b.meta[0] for b in parts],
                 text=[(b.text or [""])[0] for b in parts])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--per-category", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "src/anoplug_anomalycontrol/weights/toy-defects"))
    ap.add_argument("--loss-png", default=str(HERE / "docs/loss.png"))
    a = ap.parse_args()
    torch.manual_seed(a.seed)  # nothing draws from it (the fit has its own generator); belt and braces
    data = toy_defects(a.per_category)
    gen = AnomalyControl(**{**PRESETS["cpu"], "fit_steps": a.steps, "seed": a.seed})
    t0 = time.time()
    gen.fit(None, data, progress=True)
    wall = time.time() - t0
    out = Path(a.out)
    gen.save(out)
    losses = [float(h["loss"]) for h in gen.history]
    log = {"command": f"OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-anomalycontrol/tools/train_toy.py "
                      f"--steps {a.steps} --per-category {a.per_category} --seed {a.seed}",
           "seed": a.seed, "steps": a.steps, "items": len(data), "wall_s": round(wall, 1),
           "threads": torch.get_num_threads(), "loss_first50": sum(losses[:50]) / max(1, len(losses[:50])),
           "loss_last50": sum(losses[-50:]) / max(1, len(losses[-50:])), "losses": [round(x, 6) for x in losses]}
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    k = 25
    smooth = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
    ax.plot(losses, alpha=0.3, label="per step")
    ax.plot(smooth, label=f"running mean ({k + 1})")
    ax.set_xlabel("step")
    ax.set_ylabel("ε-MSE")
    ax.set_title(f"AnomalyControl SGA on toy defects ({len(data)} items, seed {a.seed})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.loss_png, dpi=100)
    print(json.dumps({k: v for k, v in log.items() if k != "losses"}))


if __name__ == "__main__":
    main()
