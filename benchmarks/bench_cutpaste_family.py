"""Throughput of the CutPaste-style generators (cutpaste, cutpaste-scar, cutpaste-3way, nsa, draem).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cutpaste_family.py`` (writes
``benchmarks/results/cutpaste_family.json``). Batch 32 at 256² and 512², with 1 and 2 torch
threads (``torch.set_num_threads``). Every figure is the median of ``--repeats`` timed calls
after one warm-up call; clone, ``generate`` and the method alone are timed in interleaved rounds
and ratios are medians of per-round ratios. The machine-independent figure is the ratio to a
plain ``clone()`` of the same batch (image + mask: the memory-bandwidth floor of returning a new batch):

- ``ratio_to_clone``: the whole public ``generate()`` call, including the host's input and
  output validation (value-range and binary-mask scans);
- ``core_ratio_to_clone``: the method alone (``generate_batch``: sampling + applying);
- ``cpu_*``: the same from this process's CPU time (``time.process_time``), steadier than wall
  time on a machine shared with other jobs.

NSA is also timed through the OpenCV path (``anoplug_nsa.reference``: cv2.resize,
cv2.seamlessClone, cv2.medianBlur and scikit-image's disk median, one image at a time, the
official implementation's operations) on the same sampled geometry, as the baseline.
``--profile`` adds the top functions (cProfile, by own time) of every method at 256², 1 thread.
"""

from __future__ import annotations

import os

# Torch's OpenMP threads busy-wait by default; on a machine shared with other jobs two threads then
# spin against each other (a 2-thread scar call measured 1.6 s instead of 0.05 s). Passive waiting
# is the setting that makes 1- vs 2-thread figures mean anything here; it is recorded in the JSON.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import cProfile
import io
import json
import platform
import pstats
import statistics
import time
from pathlib import Path

import torch

import anoplug
from anoplug.data.toy import ToyDataset
from anoplug.seeding import resolve_seeds, rngs_for
from anoplug.types import Batch, to_uint8

RESULTS = Path(__file__).resolve().parent / "results" / "cutpaste_family.json"
TARGETS = {  # issue 4
    "cutpaste_ratio": 3.0,  # cutpaste / scar / 3-way: at most 3x the batch clone
    "draem_img_per_s_256_1t": 280.0,
    "nsa_img_per_s_256_1t": 90.0,
}


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds of this process) over ``repeats`` calls after a warm-up."""
    fn()  # warm-up (caches, allocator)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _paired_times(fns: dict, repeats: int) -> dict:
    """Interleaved timing: each repeat runs every function once, in turn (after one warm-up round).

    Returns per function the median wall and CPU seconds, and per function its median *per-round*
    ratio to the first function (the clone): on a shared machine the load drifts during a run, and
    ratios taken within one round cancel most of that drift.
    """
    for fn in fns.values():
        fn()
    wall: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    ref = next(iter(fns))
    out = {}
    for k in fns:
        out[k] = {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k]),
                  "ratio": statistics.median(w / r for w, r in zip(wall[k], wall[ref])),
                  "cpu_ratio": statistics.median(c / r for c, r in zip(cpu[k], cpu[ref]))}
    return out


def _configs() -> list[tuple[str, str, dict, str]]:
    """(label, generator name, params, toy category of the input batch)."""
    return [
        ("cutpaste", "cutpaste", {}, "fabric"),
        ("cutpaste-scar", "cutpaste-scar", {}, "fabric"),
        ("cutpaste-3way", "cutpaste-3way", {}, "fabric"),
        ("nsa (fabric: texture, mixed, soft label)", "nsa", {}, "fabric"),
        ("nsa (capsule: object masks, normal, soft label)", "nsa", {}, "capsule"),
        ("nsa (fabric, binary label only)", "nsa", {"soft_label": False}, "fabric"),
        ("draem (p=1, skimage textures)", "draem", {"probability": 1.0}, "fabric"),
        ("draem (p=1, perlin as texture)", "draem", {"probability": 1.0, "texture_source": "perlin"}, "fabric"),
    ]


def _opencv_nsa(batch: Batch, gen, seed: int, threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the OpenCV path on the same sampled geometry, one image at a time."""
    import cv2
    from anoplug_nsa.reference import reference_one

    cv2.setNumThreads(threads)
    samples = gen.sample(batch, rngs_for(resolve_seeds(len(batch), seed=seed)))
    dest = to_uint8(batch.image)
    objs = None if batch.object_mask is None else (batch.object_mask[:, 0] > 0).numpy()

    def run() -> None:
        for i, s in enumerate(samples):
            j = s["source_index"]
            reference_one(dest[i], dest[j], s, None if objs is None else objs[i], None if objs is None else objs[j])

    return _median_time(run, 3)


def _profile(gen, batch: Batch, top: int = 12, calls: int = 5) -> list[str]:
    """cProfile of ``calls`` generate calls (different seeds), top functions by own time."""
    prof = cProfile.Profile()
    prof.enable()
    for k in range(calls):
        gen.generate(batch, seed=11 + k)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln.rstrip() for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((k for k, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return lines[start:start + top + 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", nargs="*", default=None, help="labels (prefix match) to run")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    batches: dict[tuple[str, int], Batch] = {}
    rows, profiles = [], {}
    for size in args.sizes:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for label, name, params, category in _configs():
                if args.only and not any(label.startswith(o) for o in args.only):
                    continue
                key = (category, size)
                if key not in batches:
                    batches[key] = ToyDataset(category, size=size).batch(list(range(args.batch)))
                batch = batches[key]
                gen = anoplug.get_generator(name, **params)
                seeds = resolve_seeds(len(batch), seed=1)
                t = _paired_times({"clone": lambda: batch.clone(),  # noqa: B023
                                   "generate": lambda: gen.generate(batch, seed=1),  # noqa: B023
                                   "core": lambda: gen.generate_batch(batch, rngs_for(seeds))}, args.repeats)  # noqa: B023
                gen_s, gen_cpu = t["generate"]["wall"], t["generate"]["cpu"]
                row = {"method": label, "generator": name, "params": params, "input": f"toy:{category}",
                       "size": size, "threads": threads, "batch": len(batch),
                       "img_per_s": round(len(batch) / gen_s, 1), "median_s": round(gen_s, 5),
                       "core_img_per_s": round(len(batch) / t["core"]["wall"], 1),
                       "core_median_s": round(t["core"]["wall"], 5),
                       "clone_median_s": round(t["clone"]["wall"], 5),
                       "ratio_to_clone": round(t["generate"]["ratio"], 2),
                       "core_ratio_to_clone": round(t["core"]["ratio"], 2),
                       "cpu_ratio_to_clone": round(t["generate"]["cpu_ratio"], 2),
                       "core_cpu_ratio_to_clone": round(t["core"]["cpu_ratio"], 2),
                       "cpu_img_per_s": round(len(batch) / gen_cpu, 1)}
                if name == "nsa":
                    ref, ref_cpu = _opencv_nsa(batch, gen, seed=1, threads=threads)
                    row["opencv_path_img_per_s"] = round(len(batch) / ref, 1)
                    row["opencv_path_cpu_img_per_s"] = round(len(batch) / ref_cpu, 1)
                    row["speedup_vs_opencv_path"] = round(ref / gen_s, 2)
                    row["cpu_speedup_vs_opencv_path"] = round(ref_cpu / gen_cpu, 2)
                row["load_average_1min"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.profile and size == 256 and threads == 1 and label not in profiles:
                    profiles[label] = _profile(gen, batch)

    def find(prefix: str, size: int, threads: int) -> list[dict]:
        return [r for r in rows if r["method"].startswith(prefix) and r["size"] == size and r["threads"] == threads]

    checks = {}
    for prefix in ("cutpaste", "cutpaste-scar", "cutpaste-3way"):
        for r in [r for r in rows if r["method"] == prefix]:
            checks[f"{prefix} {r['size']}² {r['threads']}t ratio ≤ 3"] = {
                "generate": r["ratio_to_clone"], "core": r["core_ratio_to_clone"], "core_cpu": r["core_cpu_ratio_to_clone"],
                "met": r["ratio_to_clone"] <= TARGETS["cutpaste_ratio"]}
    for prefix, target in (("draem", TARGETS["draem_img_per_s_256_1t"]), ("nsa", TARGETS["nsa_img_per_s_256_1t"])):
        for r in find(prefix, 256, 1):
            checks[f"{r['method']} 256² 1t ≥ {target:g} img/s"] = {"img_per_s": r["img_per_s"],
                                                                   "cpu_img_per_s": r["cpu_img_per_s"],
                                                                   "met": r["img_per_s"] >= target}
    report = {
        "benchmark": "cutpaste family throughput (issue 4)",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cutpaste_family.py",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_at_end": list(os.getloadavg()),
                    "env": {k: os.environ.get(k, "") for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
                    "note": "shared machine: medians of repeated calls; absolute numbers are noisy, ratios less so"},
        "repeats": args.repeats, "targets": TARGETS, "checks": checks, "results": rows, "profiles": profiles,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
    for k, v in checks.items():
        print(f"{'MET ' if v['met'] else 'MISS'} {k}: {v}")


if __name__ == "__main__":
    main()
