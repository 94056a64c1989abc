"""Train the shipped ``fabric`` checkpoint (or the λ = 0 ablation) — the exact command behind the README numbers.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-eid-gan/tools/train_checkpoint.py
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-eid-gan/tools/train_checkpoint.py \\
        --penalty-weight 0 --out /tmp/eid-gan-no-penalty --tag no_penalty

Data: the toy:fabric *test* split rendered at 64², indices 48 … 4247 (the evaluators use indices
0 … 47, so no evaluation image is a training image), the defects whose mask covers at most 1 %
of the image (the "extremely imbalanced" training set; see the README for the fraction).
Writes the weights (``save``), ``docs/history_<tag>.json`` and ``docs/loss_<tag>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
FIRST, LAST = 48, 4248  # test-split indices used for training (the evaluators use 0..47)


def training_defects(size: int = 64, max_area: float = 0.01, types: tuple[str, ...] | None = None):
    """The training anomalies: toy:fabric test indices FIRST..LAST-1, defects only (the fit filters the area)."""
    from anoplug.data.toy import ToyDataset

    ds = ToyDataset("fabric", "test", size=size, length=LAST)
    idx = [i for i in range(FIRST, LAST) if ds.label(i) != "good" and (types is None or ds.label(i) in types)]
    return ds.batch(idx)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--penalty-weight", type=float, default=-1.0, help="-1 = the cpu preset's λ")
    ap.add_argument("--types", default="hole", help="comma-separated defect types to train on ('' = all)")
    ap.add_argument("--max-area", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "src/anoplug_eid_gan/weights/fabric"))
    ap.add_argument("--tag", default="fabric")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from anoplug_eid_gan.eidgan import EIDGAN

    from anoplug.train.log import print_every

    types = tuple(t for t in args.types.split(",") if t) or None
    defects = training_defects(types=types)
    gen = EIDGAN(preset="cpu", max_outlier_area=args.max_area, penalty_weight=args.penalty_weight,
                 fit_steps=args.steps, seed=args.seed)
    t0 = time.time()
    gen.fit(None, defects, progress=print_every(250))
    wall = time.time() - t0
    gen.save(args.out)
    area = torch.stack([gen.outlier_masks[k].mean() for k in range(len(gen.outlier_labels))])
    info = {"steps": args.steps, "seed": args.seed, "penalty_weight": gen.resolved.penalty_weight, "types": types,
            "max_area": args.max_area, "n_defects": len(gen.outlier_labels), "outlier_area_mean": float(area.mean()),
            "outlier_area_min": float(area.min()), "outlier_area_max": float(area.max()), "wall_s": wall,
            "s_per_step": wall / args.steps, "torch_threads": torch.get_num_threads(),
            "history": [{k: round(v, 5) if isinstance(v, float) else v for k, v in h.items()} for h in gen.history]}
    docs = HERE / "docs"
    docs.mkdir(exist_ok=True)
    (docs / f"history_{args.tag}.json").write_text(json.dumps(info, indent=1))
    plot(gen.history, docs / f"loss_{args.tag}.png", args.tag)
    print(f"saved {args.out} ({wall:.0f} s, {wall / args.steps:.3f} s/step, {len(gen.outlier_labels)} defects, "
          f"mean outlier area {100 * float(area.mean()):.2f} %)")
    return 0


def plot(history: list[dict], path: Path, tag: str) -> None:
    """D loss, G adversarial loss and the penalty per step (a 50-step running mean over the raw values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for key in ("d_loss", "g/adv", "g/penalty"):
        v = np.array([h.get(key, np.nan) for h in history], dtype=float)
        if np.isnan(v).all():
            continue
        ax.plot(v, alpha=0.2)
        k = min(50, len(v))
        ax.plot(np.arange(k - 1, len(v)), np.convolve(v, np.ones(k) / k, mode="valid"), label=key,
                color=ax.lines[-1].get_color())
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title(f"EID-GAN training ({tag})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
