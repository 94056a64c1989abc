"""Per-step training time of each fine-tuning mode on the tiny base (64 px, 16×16×4 latents) on CPU.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_finetune.py`` (writes
``benchmarks/results/finetune_steps.json`` and ``.md``). One function per mode
(``bench_<mode>``, listed in :data:`BENCHES`), each building its mode on a fresh copy of the
base and running it on :class:`anoplug.train.Trainer` for ``--warmup`` + ``--steps``
updates. A step's time is the gap between two consecutive progress callbacks of the Trainer
(one full update: forward, backward, clipping, optimiser, bookkeeping); the table gives the
median over the last ``--steps`` of them, wall and CPU time of this process (the machine is
shared, so CPU time is the steadier number). Batch = instance items per step (DreamBooth with
prior preservation runs as many class items beside them, so its UNet batch is twice that).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_steps.json"
PROMPT = "a photo of sks nut"
CLASS_PROMPT = "a photo of nut"


class StepClock:
    """The Trainer's progress callback: wall and CPU time between consecutive updates."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def __call__(self, step: int, total: int, row: dict) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def summary(self, skip: int) -> dict:
        wall = [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:])][skip:]
        cpu = [b[1] - a[1] for a, b in zip(self.marks, self.marks[1:])][skip:]
        return {"timed_steps": len(wall), "median_wall_s": round(statistics.median(wall), 4),
                "median_cpu_s": round(statistics.median(cpu), 4), "min_wall_s": round(min(wall), 4)}


def instance_images(n: int) -> torch.Tensor:
    """Toy nuts at 64 px (what the tiny base was trained on)."""
    from anoplug.data.toy import ToyDataset

    return ToyDataset("nut", "train", size=64, length=n).batch(range(n)).image


def fresh_parts(pipe):
    from anoplug.diffusion.loading import Parts

    p = Parts.from_pipeline(pipe)
    return Parts(copy.deepcopy(p.unet), p.vae, copy.deepcopy(p.text_encoder), p.tokenizer, p.scheduler).freeze()


def bench_textual_inversion(pipe, latents: torch.Tensor, *, steps: int, batch: int, clock: StepClock) -> dict:
    from anoplug.diffusion.finetune import textual_inversion as T

    parts = fresh_parts(pipe)
    emb = T.install_placeholders(parts.text_encoder, parts.tokenizer, ["<b0>", "<b1>"], "nut")
    T.train_embeddings(parts, latents, ["a photo of <b0><b1>"] * len(latents), [emb.learned], steps=steps, lr=5e-3,
                       batch_size=batch, generator=torch.Generator().manual_seed(0), progress=clock)
    return {"trainable_params": emb.learned.numel(), "what_trains": "2 placeholder rows (Adam)"}


def bench_lora(pipe, latents: torch.Tensor, *, steps: int, batch: int, clock: StepClock) -> dict:
    from anoplug.diffusion.finetune import lora as L

    parts = fresh_parts(pipe)
    L.add_lora(parts, text_encoder=True)
    L.train_lora(parts, latents, [PROMPT] * len(latents), steps=steps, batch_size=batch,
                 generator=torch.Generator().manual_seed(0), progress=clock)
    counts = L.parameter_counts(parts)
    return {"trainable_params": counts["lora"], "full_params": counts["full_unet_and_text_encoder"],
            "trainable_fraction": round(counts["lora"] / counts["full_unet_and_text_encoder"], 5),
            "what_trains": f"LoRA rank {L.RANK} on UNet to_q/k/v/out.0 + CLIP q/k/v/out_proj (AdamW)"}


def _dreambooth(pipe, latents, *, steps, batch, clock, prior) -> dict:
    from anoplug.diffusion.finetune import dreambooth as D

    parts = fresh_parts(pipe)
    D.train_dreambooth(parts, latents, PROMPT, prior=prior, steps=steps, batch_size=batch,
                       generator=torch.Generator().manual_seed(0), progress=clock)
    return {"trainable_params": sum(p.numel() for p in parts.unet.parameters()), "what_trains": "full UNet (AdamW)"}


def bench_dreambooth(pipe, latents: torch.Tensor, *, steps: int, batch: int, clock: StepClock) -> dict:
    return _dreambooth(pipe, latents, steps=steps, batch=batch, clock=clock, prior=None)


def bench_dreambooth_prior(pipe, latents: torch.Tensor, *, steps: int, batch: int, clock: StepClock) -> dict:
    from anoplug.diffusion.finetune import dreambooth as D

    t0 = time.perf_counter()
    prior = D.make_prior(pipe, CLASS_PROMPT, 8, seed=0, num_inference_steps=50)
    made = round(time.perf_counter() - t0, 2)
    out = _dreambooth(pipe, latents, steps=steps, batch=batch, clock=clock, prior=prior)
    return {**out, "what_trains": "full UNet (AdamW), λ = 1",
            "class_images": {"n": 8, "sampling": "DDIM 50 steps, CFG 7.5", "wall_s": made}}


#: mode -> its bench function (the conditioning modes add theirs here).
BENCHES: dict[str, Callable[..., dict]] = {
    "textual_inversion": bench_textual_inversion,
    "lora": bench_lora,
    "dreambooth": bench_dreambooth,
    "dreambooth_prior": bench_dreambooth_prior,
}


def write_markdown(res: dict, path: Path) -> None:
    lines = [f"# Fine-tuning: time per training step on the tiny base ({res['size']} px, CPU)", "",
             f"{res['threads']} thread(s), torch {res['torch']}, {res['machine']}; median of {res['steps']} steps after "
             f"{res['warmup']} warm-up. Batch = instance items per step (DreamBooth + prior adds as many class items). "
             f"Load average {res['load_average_start']:.1f} → {res['load_average_end']:.1f} on a shared machine: "
             "wall time includes waiting for the CPU, CPU time does not.",
             "", "| mode | batch | wall s/step | CPU s/step | trainable params | what trains |", "|---|---|---|---|---|---|"]
    for key, r in res["modes"].items():
        mode, batch = key.rsplit("@", 1)
        frac = f" ({100 * r['trainable_fraction']:.2f} % of {r['full_params']:,})" if "trainable_fraction" in r else ""
        lines.append(f"| {mode} | {batch} | {r['median_wall_s']:.3f} | {r['median_cpu_s']:.3f} | "
                     f"{r['trainable_params']:,}{frac} | {r['what_trains']} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batches", default="1,4", help="comma-separated instance batch sizes")
    ap.add_argument("--modes", default=",".join(BENCHES))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from anoplug.diffusion.finetune.common import encode_latents
    from anoplug.diffusion.loading import Parts, load_pipeline

    pipe = load_pipeline("tiny-base")
    latents = encode_latents(Parts.from_pipeline(pipe), instance_images(4))
    res: dict = {"machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "size": 64, "steps": args.steps, "warmup": args.warmup, "load_average_start": os.getloadavg()[0],
                 "modes": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        for mode in args.modes.split(","):
            clock = StepClock()
            info = BENCHES[mode](pipe, latents, steps=args.warmup + args.steps + 1, batch=batch, clock=clock)
            res["modes"][f"{mode}@{batch}"] = {**clock.summary(args.warmup), **info}
            print(mode, batch, res["modes"][f"{mode}@{batch}"], flush=True)
    res["load_average_end"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    write_markdown(res, RESULTS.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
