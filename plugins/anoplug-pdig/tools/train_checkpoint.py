"""Train the shipped ``elcells`` checkpoint: SCE + LISA on the plugin's EL-like cell-array set (seed 0).

    nice -n 10 env OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python \
        plugins/anoplug-pdig/tools/train_checkpoint.py --steps 600

Writes ``src/anoplug_pdig/weights/elcells/`` (safetensors + config), the loss history
``docs/history.json`` and the loss curve ``docs/loss.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from anoplug_pdig import elcells
from anoplug_pdig.method import Pdig

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "anoplug_pdig" / "weights" / "elcells")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    normals, defects = elcells.dataset("train", n_normal=32, n_defect=48, size=64, seed=0)
    print(f"data: {len(normals)} normals, {len(defects)} defects", flush=True)
    gen = Pdig(fit_steps=a.steps, seed=a.seed)
    t0 = time.time()

    def progress(step: int, total: int, row: dict) -> None:
        if step % 10 == 0 or step in (1, total):
            print(f"step {step}/{total} loss {row.get('loss', float('nan')):.4f} {time.time() - t0:.0f}s", flush=True)

    gen.fit(normals, defects, progress=progress)
    wall = time.time() - t0
    gen.save(a.out)
    hist = [float(h["loss"]) for h in gen.history]
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "history.json").write_text(json.dumps({"steps": a.steps, "seed": a.seed, "wall_s": wall,
                                                            "loss": hist}))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = 25
    smooth = [sum(hist[max(0, i - k + 1):i + 1]) / len(hist[max(0, i - k + 1):i + 1]) for i in range(len(hist))]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(hist, alpha=0.3, label="per step")
    ax.plot(smooth, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted ε-MSE")
    ax.set_title(f"PDIG elcells (SCE + LISA), seed {a.seed}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "loss.png", dpi=100)
    size = sum(p.stat().st_size for p in a.out.iterdir())
    print(f"done: {a.steps} steps in {wall:.0f}s, weights {size / 1e6:.2f} MB in {a.out}")


if __name__ == "__main__":
    main()
