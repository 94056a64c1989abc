"""Train the shipped CAGEN checkpoint: a mask-hinted ControlNet of the tiny base, 3 shots per toy defect type.

The shots are the first three defects of each type in the toy test split of ``--category``
(``toy:metal/test/…``; their ids are in ``config.json`` as ``shot_sources``), so those twelve
images are training images from then on: leave them out of any evaluation on that split.
``fit`` runs the ``cpu`` preset (the paper's recipe with a larger learning rate and fewer steps)
on :class:`anoplug.train.Trainer`; one ``torch.Generator`` seeded with ``--seed`` draws every
batch, timestep and noise. The ControlNet is stored in float16 (loading casts it back to
float32), which halves the file.

    OMP_NUM_THREADS=1 nice -n 10 python plugins/anoplug-cagen/tools/train_shipped.py --steps 1500
    python plugins/anoplug-cagen/tools/train_shipped.py --plot plugins/anoplug-cagen/docs/loss_curve.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent / "src" / "anoplug_cagen" / "weights"


def to_float16(directory: Path) -> None:
    """Rewrite ``weights.safetensors`` with the floating tensors in float16 (safetensors, never pickle)."""
    from safetensors.torch import load_file, save_file

    path = directory / "weights.safetensors"
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"anoplug_method": "cagen"})


def train(category: str, steps: int, seed: int, pool: int, size: int, out: Path, checkpoint_every: int = 0,
          checkpoint_dir: Path | None = None) -> dict:
    """Fit and save; with ``checkpoint_every`` a full checkpoint (loadable by ``Cagen.load``) every that many steps.

    The learning rate is constant, so the checkpoint at step k holds the weights of a k-step run.
    """
    from anoplug_cagen.method import Cagen

    from anoplug.data.toy import ToyDataset

    b = ToyDataset(category, split="test", size=size, length=pool).batch(range(pool))
    anomalies = b[[i for i, lab in enumerate(b.label) if lab != "good"]]
    gen = Cagen.preset("cpu", fit_steps=steps, seed=seed)
    t0 = time.perf_counter()
    gen.fit(None, anomalies, checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir,
            progress=lambda step, total, row: print(f"{time.perf_counter() - t0:7.1f}s step {step}/{total} "
                                                    f"loss {row.get('loss', float('nan')):.4f}", flush=True))
    seconds = time.perf_counter() - t0
    return finish(gen, category, out, seconds,
                  f"tools/train_shipped.py --category {category} --steps {steps} --seed {seed} --pool {pool} --size {size}",
                  [h["loss"] for h in gen.history])


def finish(gen, category: str, out: Path, seconds: float, command: str, losses: list[float]) -> dict:
    """Save ``gen`` as the shipped checkpoint (float16) with its training log."""
    d = out / category
    gen.save(d)
    to_float16(d)
    log = {"command": command, "category": category, "types": gen.types, "shots": gen.shot_sources,
           "steps": len(losses), "seconds": round(seconds, 1), "threads": torch.get_num_threads(), "losses": losses,
           "weights_bytes": (d / "weights.safetensors").stat().st_size}
    (d / "train_log.json").write_text(json.dumps(log) + "\n")
    return log


def plot(log_path: Path, png: Path) -> None:
    """The per-step ε-MSE and its moving mean over 50 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = json.loads(log_path.read_text())
    v = log["losses"]
    k = min(50, len(v))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(v, alpha=0.3, lw=0.6, label="per step")
    ax.plot(range(k, len(v) + 1), [sum(v[i - k:i]) / k for i in range(k, len(v) + 1)], label=f"mean of {k}")
    ax.set_title(f"CAGEN ControlNet, toy {log['category']} ({log['seconds']:.0f} s, {log['threads']} thread)")
    ax.set_xlabel("step")
    ax.set_ylabel("eps-MSE")
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", default="metal")
    ap.add_argument("--steps", type=int, default=1500, help="ControlNet steps (the cpu preset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=48, help="toy test samples the shots are chosen from")
    ap.add_argument("--size", type=int, default=64, help="image side (the tiny base's native 64)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--checkpoint-dir", type=Path)
    ap.add_argument("--ship-checkpoint", type=Path, help="only ship this checkpoint of an earlier run (its step-k "
                    "weights equal a k-step run: constant learning rate) with --seconds of its wall time")
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--plot", type=Path, help="only draw the loss curve of --out/--category to this PNG")
    args = ap.parse_args()
    if args.plot:
        plot(args.out / args.category / "train_log.json", args.plot)
        return
    if args.ship_checkpoint:
        from anoplug_cagen.method import Cagen

        from anoplug.serial import unpack
        from anoplug.train.state import TRAINING_STATE

        state = json.loads((args.ship_checkpoint / f"{TRAINING_STATE}.json").read_text())
        losses = [h["loss"] for h in unpack(state["history"])]
        log = finish(Cagen.load(args.ship_checkpoint), args.category, args.out, args.seconds,
                     f"tools/train_shipped.py --category {args.category} --steps {len(losses)} --seed {args.seed} "
                     f"--pool {args.pool} --size {args.size}", losses)
    else:
        log = train(args.category, args.steps, args.seed, args.pool, args.size, args.out, args.checkpoint_every,
                    args.checkpoint_dir)
    print(json.dumps({k: v for k, v in log.items() if k != "losses"}))


if __name__ == "__main__":
    main()
