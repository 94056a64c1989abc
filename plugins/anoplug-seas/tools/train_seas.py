"""Train the shipped SeaS checkpoint on one toy category (fixed seed), and write its loss curve.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-seas/tools/train_seas.py

Data: the embedded toy dataset at 64 px (the tiny base's size): ``--normals`` normal images of
the train split, and ``--per-type`` real defects of each chosen type from the test split, of
which SeaS itself keeps the first max(N//3, 1) per type (the official rule); the others are
held out for ``evaluate_masks.py``. The UNet is stored in float16 (``--half``) to keep the file small.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from anoplug_seas.seas import CPU_PRESET, SeaS

from anoplug.data.toy import ToyDataset

HERE = Path(__file__).resolve().parent.parent
DEFAULT_OUT = HERE / "src" / "anoplug_seas" / "weights" / "toy-carpet"


def toy_data(category: str, defects: list[str], per_type: int, normals: int, size: int = 64) -> tuple:
    """(normal images, anomalies with masks): the anomalies are ordered by type, the first ones per type train."""
    nrm = ToyDataset(category, "train", size=size, length=normals).batch(range(normals))
    cycle = len(defects) + 1
    test = ToyDataset(category, "test", size=size, length=cycle * per_type, defects=defects)
    idx = [i for d in defects for i in range(cycle * per_type) if test.label(i) == d]
    return nrm, test.batch(idx)


def halve(directory: Path) -> None:
    """Rewrite weights.safetensors with every float32 tensor as float16 (load casts back to float32)."""
    from safetensors.torch import load_file, save_file

    path = directory / "weights.safetensors"
    tensors = {k: (v.half() if v.dtype == torch.float32 else v) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"anoplug_method": "seas"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", default="carpet")
    ap.add_argument("--defects", default="hole,stain")
    ap.add_argument("--per-type", type=int, default=30)
    ap.add_argument("--normals", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--gen-steps-per-type", type=int, default=CPU_PRESET["gen_steps_per_type"])
    ap.add_argument("--rmp-steps-per-type", type=int, default=CPU_PRESET["rmp_steps_per_type"])
    ap.add_argument("--no-half", action="store_true", help="keep float32 weights")
    ap.add_argument("--log-dir", type=Path, default=HERE / "docs", help="where train_log.json and loss.png go")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    normals, anomalies = toy_data(args.category, args.defects.split(","), args.per_type, args.normals)
    params = {**CPU_PRESET, "seed": args.seed, "gen_steps_per_type": args.gen_steps_per_type,
              "rmp_steps_per_type": args.rmp_steps_per_type}
    gen = SeaS(**params)
    t0 = time.time()

    def progress(step: int, total: int, row: dict) -> None:
        if step % 50 == 0 or step == total:
            print(f"{step}/{total} {time.time() - t0:.0f}s " + " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    gen.fit(normals, anomalies, progress=progress)
    wall = time.time() - t0
    gen.save(args.out)
    if not args.no_half:
        halve(args.out)
    log = {"wall_s": round(wall, 1), "seed": args.seed, "category": args.category, "defects": args.defects,
           "per_type": args.per_type, "normals": args.normals, "optimizer": gen.optimizer_used,
           "threads": torch.get_num_threads(), "history": gen.history}
    args.log_dir.mkdir(parents=True, exist_ok=True)
    (args.log_dir / "train_log.json").write_text(json.dumps(log, indent=1))
    plot(gen.history, args.log_dir / "loss.png")
    size = (args.out / "weights.safetensors").stat().st_size
    print(f"done in {wall:.0f}s; weights {size / 1e6:.2f} MB in {args.out}")


def plot(history: list[dict], path: Path) -> None:
    """Loss curves of both phases (running mean over 25 updates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(v: list[float], k: int = 25) -> list[float]:
        return [sum(v[max(0, i - k + 1): i + 1]) / len(v[max(0, i - k + 1): i + 1]) for i in range(len(v))]

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ft = [h for h in history if h.get("phase") == "finetune"]
    for key in [k for k in ft[0] if "loss" in k and k != "loss"] if ft else []:
        axes[0].plot(smooth([h[key] for h in ft]), label=key)
    axes[0].set_title("fine-tune (UNet + token table)")
    axes[0].set_xlabel("update")
    axes[0].legend(fontsize=8)
    rm = [h for h in history if h.get("phase") == "rmp"]
    for key in ("focal", "focal_coarse"):
        if rm:
            axes[1].plot(smooth([h[key] for h in rm]), label=key)
    axes[1].set_title("RMP mask head")
    axes[1].set_xlabel("update")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
