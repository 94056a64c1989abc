"""Train the shipped checkpoint: SDGAN (cpu preset) on toy:fabric normals + reference fabric defects.

The exact command that produced ``src/anoplug_sdgan/weights/fabric`` (run from the repo root)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-sdgan/tools/train_checkpoint.py

Data: the 64 normals of ``toy:fabric``'s train split and the *reference* defects of its test split
(the first ⌊n/3⌋ of each type, ``anoplug_asbench.bench.split_shots``: 12 images of 4 types), so
the held-out defects that ``downstream-utility`` tests on are never seen in training. Their masks
are not used (SDGAN is unpaired). Writes the weights, ``docs/train_history.json`` and
``docs/loss_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
WEIGHTS = HERE / "src" / "anoplug_sdgan" / "weights" / "fabric"
DOCS = HERE / "docs"


def training_data(category: str = "fabric", size: int = 64):
    """(normals, reference defects) of a toy category at ``size``."""
    from anoplug_asbench.bench import split_shots

    from anoplug.data import open_dataset

    normals = open_dataset(f"toy:{category}", split="train", size=size).all()
    test = open_dataset(f"toy:{category}", split="test", size=size).all()
    refs, _ = split_shots(test.label)
    return normals, test[refs]


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def smooth(v: list[float], k: int = 25) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        return np.convolve(v, np.ones(k) / k, mode="valid") if len(v) > k else v

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("d/defect_1", "d/defect_2", "d/normal_1", "d/normal_2"):
        axes[0].plot(smooth([h[key] for h in history]), label=key)
    for key in ("g/adv_defect", "g/adv_normal"):
        axes[1].plot(smooth([h[key] for h in history]), label=key)
    for key in ("g/cycle_normal", "g/cycle_defect"):
        axes[2].plot(smooth([h[key] for h in history]), label=key)
    titles = ("critics (D1 rewards real, D2 rewards translated)", "translators' D2 adversarial terms",
              "cycle terms (λ·L1)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step (25-step moving mean)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--docs", type=Path, default=DOCS)
    args = ap.parse_args()

    from anoplug_sdgan.sdgan import SDGAN

    torch.set_num_threads(1)
    normals, defects = training_data()
    gen = SDGAN(preset="cpu", batch_size=args.batch_size, fit_steps=args.steps, seed=args.seed)
    t0 = time.perf_counter()
    gen.fit(normals, defects, progress=True)
    seconds = time.perf_counter() - t0
    gen.save(args.out)
    args.docs.mkdir(parents=True, exist_ok=True)
    record = {"command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-sdgan/tools/train_checkpoint.py "
                         f"--steps {args.steps} --batch-size {args.batch_size} --seed {args.seed}",
              "params": gen.params.model_dump(mode="json"), "normals": len(normals),
              "defects": len(defects), "defect_types": sorted(set(defects.label)), "seconds": round(seconds, 1),
              "seconds_per_step": round(seconds / args.steps, 4), "threads": torch.get_num_threads(),
              "history": [{k: round(v, 5) if isinstance(v, float) else v for k, v in h.items()} for h in gen.history]}
    (args.docs / "train_history.json").write_text(json.dumps(record, indent=1))
    plot_history(gen.history, args.docs / "loss_curve.png")
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"trained {args.steps} steps in {seconds:.0f} s ({seconds / args.steps:.3f} s/step); "
          f"wrote {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
