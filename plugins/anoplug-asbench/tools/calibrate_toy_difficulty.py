"""Calibrate the toy benchmark's difficulty: which setting of the held-out toy defects stops the bench saturating?

The detector that ``anoplug bench`` trains (``downstream-utility`` with the bench's CPU
profile) sees normals and *synthetic* anomalies only; the difficulty of the real toy defects
changes its test set, never its training set. So one training per (generator, repeat) can be
scored on every difficulty at once — the calibration costs the trainings of one bench run,
not one per setting (and the trained detectors are kept under ``OUT/detectors``, so a second
call scores further settings without training). Each training is the evaluator's own (same inputs, the bench's cached
generated set, same settings, repeat seeds ``sample_seed(seed, r)``), so a setting's row here
is what ``anoplug bench --data 'toy:CAT?SETTING'`` reports for it at the same thread count.

Per (generator, setting): image AUROC / pixel AP / AU-PRO as the mean over repeats with the
evaluator's Student-t interval, and for image AUROC also a stratified bootstrap interval over
the held-out test images of each training (how much the small test set alone moves it).

    OMP_NUM_THREADS=1 nice -n 10 python plugins/anoplug-asbench/tools/calibrate_toy_difficulty.py \\
        --generators draem,cutpaste,nsa --category metal --repeats 2 --out out/calibration
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_SETTINGS = ("difficulty=easy", "difficulty=medium", "difficulty=hard", "contrast=0.3",
                    "contrast=0.5&scale=0.6&width=0.5", "contrast=0.2&scale=0.6&width=0.5")


def bootstrap_auroc(scores: np.ndarray, labels: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of image AUROC, resampling goods and defects separately (seeded torch draws)."""
    from anoplug.metrics import auroc

    g = torch.Generator().manual_seed(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    vals = []
    for _ in range(resamples):
        ip = pos[torch.randint(len(pos), (len(pos),), generator=g).numpy()]
        ineg = neg[torch.randint(len(neg), (len(neg),), generator=g).numpy()]
        idx = np.concatenate([ip, ineg])
        vals.append(auroc(scores[idx], labels[idx]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def _settings(params: Any) -> Any:
    """The U-Net's resolved training settings (the evaluator's pipeline configuration where it has one)."""
    from types import SimpleNamespace

    cfg = params.pipeline_config() if hasattr(params, "pipeline_config") else params
    gamma = getattr(cfg, "focal_gamma", None)
    if getattr(params, "pipeline", "ad-unet") != "ad-unet":
        raise ValueError("the calibration scores the bench's default detector, the ad-unet pipeline")
    return SimpleNamespace(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, base_width=cfg.base_width,
                           focal_gamma=2.0 if gamma is None else gamma, anomaly_prob=params.anomaly_prob,
                           device=params.device, pixel_f1=params.pixel_f1)


def held_out(spec: str, size: int) -> Any:
    from anoplug_asbench.bench import split_shots

    from anoplug.data import open_dataset

    ds = open_dataset(spec, split="test", size=size)
    test = ds.batch(range(len(ds)))
    _, held = split_shots(test.label)
    return test[held]


def run(args: argparse.Namespace) -> dict:
    from anoplug_asbench.bench import CPU_UTILITY, BenchConfig, _open, generate_set
    from anoplug_metrics.detector import DiscriminativeUNet, predict_maps, train_detector
    from anoplug_metrics.utility import DownstreamUtility, repeat_seeds, t_interval
    from safetensors.torch import load_file, save_file

    from anoplug.metrics import detection_metrics, image_scores

    gens = [g for g in args.generators.split(",") if g]
    settings = [s for s in args.settings.split(",") if s]
    out = Path(args.out)
    cfg = BenchConfig(generators=gens, data=[f"toy:{args.category}"], size=args.size, n_train=args.n_train,
                      n_synthetic=args.n_synthetic, out=str(out))
    normals = _open(f"toy:{args.category}", "train", args.size, args.n_train)
    ev = DownstreamUtility(**CPU_UTILITY, size=args.size, seed=args.seed, repeats=args.repeats)
    tests = {s: ev._test_set(held_out(f"toy:{args.category}?{s}", args.size)) for s in settings}
    p = _settings(ev.params)
    seeds = repeat_seeds(args.seed, args.repeats)
    members = list(gens) + (["(normals only)"] if args.baseline else [])
    raw: dict[str, dict[str, list[dict]]] = {g: {s: [] for s in settings} for g in members}
    t0 = time.process_time()
    for gname in members:
        if gname == "(normals only)":
            generated = None
        else:
            generated, *_ = generate_set(cfg, gname, args.seed, normals, out / "cache" / args.category)
        for r, seed in enumerate(seeds):
            gi = normals.image[:0] if generated is None else generated.image
            gm = torch.zeros(0, 1, *normals.image.shape[-2:]) if generated is None else generated.mask
            tr = time.process_time()
            saved = out / "detectors" / f"{gname}-repeat{r}.safetensors"
            if saved.is_file():  # a detector trained by an earlier call: score it on more settings without retraining
                model = DiscriminativeUNet(base_width=p.base_width)
                model.load_state_dict(load_file(str(saved)))
            else:
                model, _ = train_detector(ev._resize(normals.image), ev._resize(gi), ev._resize_mask(gm), steps=p.steps,
                                          batch_size=p.batch_size, lr=p.lr, base_width=p.base_width,
                                          anomaly_prob=0.0 if generated is None else p.anomaly_prob,
                                          gamma=p.focal_gamma, seed=seed, device=p.device)
                saved.parent.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(saved))
                print(f"{gname} repeat {r}: trained in {time.process_time() - tr:.0f} CPU s", flush=True)
            for s, (images, gts, labels) in tests.items():
                maps = predict_maps(model, images, device=p.device).numpy()
                m = detection_metrics(maps, gts, labels, pixel_f1=p.pixel_f1)
                lo, hi = bootstrap_auroc(image_scores(maps), labels, args.bootstrap, seed=r)
                raw[gname][s].append({"seed": seed, **m, "image_auroc_boot_low": lo, "image_auroc_boot_high": hi})
    summary = []
    for gname in members:
        for s in settings:
            reps = raw[gname][s]
            row: dict[str, Any] = {"generator": gname, "setting": s}
            for k in ("image_auroc", "pixel_ap", "au_pro"):
                mean, lo, hi = t_interval([e[k] for e in reps], ev.params.confidence)
                row[k] = {"mean": mean, "t_low": max(lo, 0.0), "t_high": min(hi, 1.0), "repeats": [e[k] for e in reps]}
            row["image_auroc"]["bootstrap"] = [[e["image_auroc_boot_low"], e["image_auroc_boot_high"]] for e in reps]
            summary.append(row)
    result = {"category": args.category, "size": args.size, "n_train": args.n_train, "n_synthetic": args.n_synthetic,
              "cpu_utility_profile": CPU_UTILITY, "repeat_seeds": seeds, "torch_threads": torch.get_num_threads(),
              "n_test": {s: int(len(t[2])) for s, t in tests.items()},
              "n_test_defective": {s: int(t[2].sum()) for s, t in tests.items()},
              "cpu_seconds": time.process_time() - t0, "summary": summary, "raw": raw}
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=1))
    return result


def table(result: dict) -> str:
    lines = ["| generator | setting | image AUROC (t-interval) | per-repeat bootstrap | pixel AP | AU-PRO |",
             "|---|---|---|---|---|---|"]
    for row in result["summary"]:
        a = row["image_auroc"]
        boot = "; ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, hi in a["bootstrap"])
        lines.append(f"| {row['generator']} | {row['setting']} | {a['mean']:.3f} [{a['t_low']:.3f}, {a['t_high']:.3f}] | "
                     f"{boot} | {row['pixel_ap']['mean']:.3f} | {row['au_pro']['mean']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generators", default="draem,cutpaste,nsa")
    ap.add_argument("--category", default="metal")
    ap.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                    help="comma-separated toy spec options, each KEY=VALUE[&KEY=VALUE]")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-synthetic", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--baseline", action="store_true", help="also train the normals-only detector")
    ap.add_argument("--out", default="out/calibration")
    args = ap.parse_args(argv)
    result = run(args)
    print(table(result))
    print(f"{result['cpu_seconds'] / 60:.1f} CPU min; wrote {Path(args.out) / 'calibration.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
