"""Downstream utility on toy metal with its confidence intervals: does the evaluator separate "nothing" from defects?

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_utility_intervals.py`` (writes
``benchmarks/results/utility_intervals.json`` and ``.md``; about 15 min on one core).

The setting is exactly ``anoplug bench``'s: toy ``metal`` at 128², 32 training normals, the
real test split divided AnomalyDiffusion's way (first third of each defect type held back
as references), 64 synthetic images per generator, the bench's CPU detector profile, and
the evaluator's defaults (3 seeded repeats, paired normals-only baselines, 95 % Student-t
intervals). ``identity`` hands the detector its own normals as "anomalies" (labels
``good``, empty masks): its true gain is 0, so its interval should contain 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from anoplug_asbench.bench import CPU_UTILITY, BenchConfig, _open, generate_set, split_shots

from anoplug.registry import get_registry

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("image_auroc", "pixel_ap", "au_pro")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generators", default="identity,draem,cutpaste,nsa")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "utility_intervals"))
    args = ap.parse_args()
    cfg = BenchConfig(generators=[], data=["toy:metal"], size=128, n_train=32, n_synthetic=64, use_cache=False)
    normals = _open("toy:metal", "train", cfg.size, cfg.n_train)
    test = _open("toy:metal", "test", cfg.size, None)
    _, held = split_shots(test.label)
    real = test[held]
    rows: dict[str, dict] = {}
    t_all = time.perf_counter()
    for name in args.generators.split(","):
        t0 = time.perf_counter()
        if name == "identity":
            generated = normals[[i % len(normals) for i in range(cfg.n_synthetic)]]
        else:
            generated, _, _, _ = generate_set(cfg, name, 0, normals, Path("/tmp/anoplug-utility-cache"))
        ev = get_registry().get_evaluator("downstream-utility", **CPU_UTILITY, size=cfg.size, seed=0,
                                          repeats=args.repeats)
        rep = ev.evaluate(generated, normals=normals, real=real)
        rows[name] = {k: rep[k] for k in rep.metrics if any(k.startswith(m) for m in METRICS)}
        rows[name]["seconds"] = time.perf_counter() - t0
        print(name, {k: round(v, 3) for k, v in rows[name].items()}, flush=True)
    out = Path(args.out)
    result = {"config": {"data": "toy:metal", "size": cfg.size, "n_train": cfg.n_train, "n_synthetic": cfg.n_synthetic,
                         "n_real_test": len(real), "detector": CPU_UTILITY, "repeats": args.repeats, "confidence": 0.95},
              "environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "threads": torch.get_num_threads()},
              "seconds": time.perf_counter() - t_all, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = ["# Downstream utility on toy metal: means and 95 % intervals over 3 repeats", "",
             f"128², 32 normals, 64 synthetic, {len(real)} held-out real test images; detector {CPU_UTILITY}; "
             f"{torch.get_num_threads()} thread(s); {result['seconds'] / 60:.1f} min.", "",
             "| generator | " + " | ".join(f"{m}_gain [95 % CI]" for m in METRICS) + " | " +
             " | ".join(METRICS) + " |", "|---|" + "---|" * (2 * len(METRICS))]
    for name, r in rows.items():
        gains = [f"{r[f'{m}_gain']:+.3f} [{r[f'{m}_gain_ci_low']:+.3f}, {r[f'{m}_gain_ci_high']:+.3f}]" for m in METRICS]
        raw = [f"{r[m]:.3f} [{r[f'{m}_ci_low']:.3f}, {r[f'{m}_ci_high']:.3f}]" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(gains + raw) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
