"""Mask alignment and CPU speed of the shipped Anodapter checkpoint, over many seeds (the README's table).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python plugins/anoplug-anodapter/tools/measure_alignment.py

Anodapter draws a *new* image from noise, so comparing it with the input normal says nothing
about its mask (everything differs). What the mask caused is measured with a counterfactual
instead: for each seed, stage 2 runs twice from the *same* rng state — once on the stage-1 mask
M, once on an empty mask (the black mask the normal images carry in training). The difference
Δ = mean over RGB of |image(M) − image(∅)| is the visible change the mask made. Per seed:

- ``share_in``: Σ Δ inside M / Σ Δ — the fraction of the visible change inside the mask, against
  ``area`` (M's share of the image: what a mask unrelated to the change would get);
- ``top_iou``: IoU of M with the ``|M|`` most-changed pixels (threshold-free; chance ≈ area);
- at each threshold τ (``--tau``), with the metrics plugin's ``mask_precision`` (a pixel changed
  when a channel moved by more than τ; "source" = the empty-mask twin): ``out_px`` changed pixels
  outside M (count), ``leak`` their share of the outside, ``cov`` the changed share of M, ``iou``.

Seconds per image: ``generate`` (both stages, shipped sampling) on a batch of 4, one torch thread,
after a warm-up call; wall time and the process's CPU time (the latter is what a busy shared
machine inflates least). Writes ``docs/alignment.json`` with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]


def twin(g: torch.Generator) -> torch.Generator:
    """A generator in the same state: stage 2 on the empty mask draws the same start noise."""
    c = torch.Generator()
    c.set_state(g.get_state())
    return c


def measure(gen, hint: torch.Tensor, types: list[str], seeds: list[int], taus: list[float]) -> list[dict]:
    """One row per seed: the quantities of the module docstring."""
    from anoplug_metrics.mask_precision import mask_precision

    rngs = [torch.Generator().manual_seed(s) for s in seeds]
    _, mask = gen.stage1_mask(types, hint, rngs)
    twins = [twin(g) for g in rngs]
    image = gen.stage2_image(mask, rngs)
    empty = gen.stage2_image(torch.zeros_like(mask), twins)
    delta = (image - empty).abs().mean(1, keepdim=True)
    per_tau = {t: mask_precision(image, empty, mask, change_threshold=t) for t in taus}
    rows = []
    for i, s in enumerate(seeds):
        m, d = mask[i, 0] > 0.5, delta[i, 0]
        k = int(m.sum())
        row: dict = {"seed": s, "type": types[i], "area": round(float(m.float().mean()), 4)}
        if k == 0:
            rows.append(row)
            continue
        top = torch.zeros_like(m)
        top.view(-1)[d.flatten().topk(k).indices] = True
        row.update(share_in=round(float(d[m].sum() / d.sum()), 4),
                   top_iou=round(float((top & m).sum() / (top | m).sum()), 4),
                   mean_in=round(float(d[m].mean()), 4), mean_out=round(float(d[~m].mean()), 4))
        for t, per in per_tau.items():
            changed = (image[i] - empty[i]).abs().amax(0) > t
            row[f"tau={t:g}"] = {"out_px": int((changed & ~m).sum()), "leak": round(float(per["leakage"][i]), 4),
                                 "cov": round(float(per["coverage"][i]), 4), "iou": round(float(per["change_iou"][i]), 4)}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=16, help="samples, seeds 0..N-1, types in turn")
    ap.add_argument("--tau", type=float, nargs="+", default=[2 / 255, 0.05, 0.1])
    ap.add_argument("--json", action="store_true", help="also write docs/alignment.json")
    args = ap.parse_args()

    from anoplug_anodapter.method import Anodapter

    from anoplug.data.toy import ToyDataset

    torch.set_num_threads(1)
    gen = Anodapter.from_pretrained("bottle")
    data = ToyDataset("bottle", split="train", size=64)
    batch = data.batch(range(40, 44))  # normals other than the object-mask source (index 0)
    b4 = batch.with_conditions(defect_type=[gen.types[i % len(gen.types)] for i in range(4)])
    gen.generate(b4, seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    gen.generate(b4, seed=1)
    s_per_image, cpu_per_image = (time.perf_counter() - t0) / 4, (time.process_time() - c0) / 4

    seeds = list(range(args.seeds))
    types = [gen.types[s % len(gen.types)] for s in seeds]
    hint = gen._object_hint(data.batch([40]), 64).expand(len(seeds), -1, -1, -1)
    rows = measure(gen, hint, types, seeds, args.tau)
    ok = [r for r in rows if "share_in" in r]

    def mean(f) -> float:
        return sum(f(r) for r in ok) / max(len(ok), 1)

    print(f"Anodapter 'bottle', {gen.params.resolved('steps')} DDIM steps/stage, CFG {gen.params.guidance}: "
          f"{s_per_image:.3f} s wall / {cpu_per_image:.3f} s CPU per image (1 thread, batch 4)")
    print(f"{len(ok)}/{len(rows)} seeds gave a non-empty mask\n")
    head = f"{'seed':>4} {'type':<13} {'area':>6} {'share_in':>8} {'top_iou':>7}"
    for t in args.tau:
        head += f" | τ={t:.3f}: {'out_px':>6} {'leak':>6} {'cov':>6} {'iou':>6}"
    print(head)
    for r in rows:
        if "share_in" not in r:
            print(f"{r['seed']:>4} {r['type']:<13} {r['area']:>6.3f}   (empty mask)")
            continue
        line = f"{r['seed']:>4} {r['type']:<13} {r['area']:>6.3f} {r['share_in']:>8.3f} {r['top_iou']:>7.3f}"
        for t in args.tau:
            c = r[f"tau={t:g}"]
            line += f" |          {c['out_px']:>6d} {c['leak']:>6.3f} {c['cov']:>6.3f} {c['iou']:>6.3f}"
        print(line)
    summary = {"seeds": len(rows), "non_empty": len(ok), "s_per_image_wall_1_thread": round(s_per_image, 3),
               "cpu_s_per_image_1_thread": round(cpu_per_image, 3),
               "area": round(mean(lambda r: r["area"]), 4), "share_in": round(mean(lambda r: r["share_in"]), 4),
               "top_iou": round(mean(lambda r: r["top_iou"]), 4), "mean_in": round(mean(lambda r: r["mean_in"]), 4),
               "mean_out": round(mean(lambda r: r["mean_out"]), 4)}
    line = f"{'mean':>4} {'':<13} {summary['area']:>6.3f} {summary['share_in']:>8.3f} {summary['top_iou']:>7.3f}"
    for t in args.tau:
        agg = {k: mean(lambda r, k=k, t=t: r[f"tau={t:g}"][k]) for k in ("out_px", "leak", "cov", "iou")}
        summary[f"tau={t:g}"] = {k: round(v, 4) for k, v in agg.items()}
        line += (f" |          {agg['out_px']:>6.0f} {agg['leak']:>6.3f} {agg['cov']:>6.3f} {agg['iou']:>6.3f}")
    print(line)
    print(f"\nmean |Δ| inside / outside the mask: {summary['mean_in']:.4f} / {summary['mean_out']:.4f}")
    if args.json:
        (HERE / "docs" / "alignment.json").write_text(json.dumps({"summary": summary, "per_seed": rows}, indent=1))


if __name__ == "__main__":
    main()
