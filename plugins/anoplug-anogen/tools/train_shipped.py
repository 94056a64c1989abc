"""Train the shipped AnoGen checkpoints: one learned vector per (toy category, defect type), k = 3 shots each.

For each category, the defects of the toy test split (the first ``--pool`` samples, good ones
dropped) are the pool; ``fit`` picks k = 3 per type with ``shot_seed`` 0 (as the official k-shot
split) and runs ``--steps`` inversion steps per type on the bundled tiny base (the ``cpu`` preset:
the paper's code with fewer steps). One ``torch.Generator`` seeded with ``--seed`` drives every
training draw. Each category is saved to ``src/anoplug_anogen/weights/<category>/`` and its
losses and wall time to ``train_log.json`` there.

    OMP_NUM_THREADS=1 nice -n 10 python tools/train_shipped.py --steps 50 --categories capsule,metal,nut
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent / "src" / "anoplug_anogen" / "weights"
CATEGORIES = ("capsule", "nut", "bottle", "metal", "wood", "fabric", "carpet", "tile", "surface3d", "tray")


def train(category: str, steps: int, seed: int, pool: int, size: int, out: Path) -> dict:
    from anoplug_anogen.anogen import AnoGen

    from anoplug.data.toy import ToyDataset

    b = ToyDataset(category, split="test", size=size, length=pool).batch(range(pool))
    anomalies = b[[i for i, lab in enumerate(b.label) if lab != "good"]]
    gen = AnoGen.preset("cpu", fit_steps=steps, seed=seed)
    t0 = time.perf_counter()
    gen.fit(None, anomalies)
    seconds = time.perf_counter() - t0
    gen.save(out / category)
    log = {"command": f"tools/train_shipped.py --steps {steps} --seed {seed} --pool {pool} --size {size}",
           "category": category, "types": gen.types, "steps_per_type": steps, "seconds": round(seconds, 1),
           "threads": torch.get_num_threads(), "losses": gen.losses, "range_source": gen.range_source}
    (out / category / "train_log.json").write_text(json.dumps(log) + "\n")
    return log


def plot(out: Path, png: Path) -> None:
    """The loss curves (moving mean over 10 steps) of every checkpoint under ``out``, one panel per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [json.loads(p.read_text()) for p in sorted(out.glob("*/train_log.json"))]
    fig, axes = plt.subplots(1, len(logs), figsize=(4 * len(logs), 3), squeeze=False)
    for ax, log in zip(axes[0], logs):
        for t, v in log["losses"].items():
            k = min(10, len(v))
            ax.plot(range(k, len(v) + 1), [sum(v[i - k:i]) / k for i in range(k, len(v) + 1)], label=t)
        ax.set_title(f"{log['category']} ({log['seconds']:.0f} s)")
        ax.set_xlabel("step of its inversion")
        ax.set_ylabel("masked eps-MSE")
        ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="inversion steps per defect type (the cpu preset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=48, help="toy test samples the shots are chosen from")
    ap.add_argument("--size", type=int, default=64, help="image side (the tiny base's native 64)")
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--plot", type=Path, help="only draw the loss curves of the checkpoints in --out to this PNG")
    args = ap.parse_args()
    if args.plot:
        plot(args.out, args.plot)
        return
    for cat in args.categories.split(","):
        log = train(cat, args.steps, args.seed, args.pool, args.size, args.out)
        last = {t: round(sum(v[-20:]) / max(1, len(v[-20:])), 4) for t, v in log["losses"].items()}
        print(f"{cat}: {log['seconds']} s, mean loss of the last 20 steps {last}", flush=True)


if __name__ == "__main__":
    main()
