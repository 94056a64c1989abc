"""Train the shipped glass-ddpm checkpoint "bottle" (the exact recipe of weights/bottle).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python \
        plugins/anoplug-glass-ddpm/tools/train_checkpoint.py

Data (tools/common.py): the 60 defective ``toy:bottle`` images at 32 px are the whole training
set; 32 of the 200 good images are kept as the normal bank of the mask extension (never in
the loss). Recipe: preset ``cpu`` (32 px, 3-level UNet), AdamW 1e-3, EMA 0.995, batch 16, seed 0,
``--epochs`` passes. The weights are stored as float16 (half the bytes; they load into the
float32 model), the loss history goes to ``docs/train_history.json`` and the curve to
``docs/loss_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tools"))

RECIPE = {"preset": "cpu", "batch_size": 16, "seed": 0}  # the cpu preset: AdamW 1e-3, EMA 0.995
EPOCHS = 350


def to_half(directory: Path) -> None:
    """Rewrite ``weights.safetensors`` with float16 floating tensors (uint8 ones stay as they are)."""
    from safetensors.torch import load_file, save_file

    path = directory / "weights.safetensors"
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"anoplug_method": "glass-ddpm", "dtype": "float16"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--out", default=str(HERE / "src" / "anoplug_glass_ddpm" / "weights" / "bottle"))
    ap.add_argument("--docs", default=str(HERE / "docs"))
    ap.add_argument("--checkpoint-dir", default="", help="write a resumable checkpoint every 100 steps here")
    ap.add_argument("--resume", default="", help="a checkpoint directory to continue from")
    args = ap.parse_args()

    from anoplug_glass_ddpm.glass_ddpm import GlassDDPM
    from common import ddpm_defects, train_good

    from anoplug.train.log import plot_history

    torch.set_num_threads(1)
    defects, good = ddpm_defects(), train_good()
    gen = GlassDDPM(**RECIPE, epochs=args.epochs)
    t0 = time.perf_counter()

    def progress(step: int, total: int, row: dict) -> None:
        if step % 50 == 0 or step == total:
            print(f"step {step}/{total}  {time.perf_counter() - t0:.0f} s  loss={row['loss']:.4f}", flush=True)

    ck = {"checkpoint_every": 100, "checkpoint_dir": args.checkpoint_dir} if args.checkpoint_dir else {}
    gen.fit(good, defects, progress=progress, resume_from=args.resume or None, **ck)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    gen.save(out)
    to_half(out)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    steps = len(gen.history)
    (docs / "train_history.json").write_text(json.dumps(
        {"recipe": {**RECIPE, "epochs": args.epochs, "steps": steps}, "data": "60 toy:bottle defects @32 px",
         "seconds": round(seconds, 1), "s_per_step": round(seconds / max(steps, 1), 3), "torch_threads": 1,
         "nice": 10, "history": gen.history}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    plot_history(gen.history, keys=("loss",), window=50, ax=ax)
    ax.set_xlabel("step")
    ax.set_ylabel("ε-prediction MSE")
    ax.set_title(f"glass-ddpm 'bottle': {steps} steps, {seconds / 60:.1f} min")
    fig.savefig(docs / "loss_curve.png", dpi=90, bbox_inches="tight")
    print(f"trained {steps} steps in {seconds:.0f} s; saved {out}")


if __name__ == "__main__":
    main()
