"""Throughput of the embedded toy dataset (per category) and of the MVTec-layout writer.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py`` (writes
``benchmarks/results/data.json``). One torch/numpy thread, as on a shared CPU; a warm-up
render per category is not timed (it fills the per-size coordinate caches). CPU time of this
process is reported next to wall time because the machines it runs on are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from anoplug.data.base import Dataset
from anoplug.data.toy import CATEGORIES, ToyDataset, render_sample
from anoplug.data.writer import write_generated
from anoplug.generator import Generator
from anoplug.types import Batch

RESULTS = Path(__file__).resolve().parent / "results" / "data.json"


class _Identity(Generator):
    """Returns its input unchanged: isolates the writer's own cost (PNG encoding, journal, renames)."""

    name = "identity-bench"
    category = "cutpaste"

    def sample(self, batch: Batch, rngs):
        return [{} for _ in rngs]

    def apply(self, batch: Batch, samples):
        return batch.clone()


class _Prerendered(Dataset):
    """A toy source rendered once up front, so the writer's own cost (PNG, journal, renames) shows."""

    def __init__(self, source: Dataset) -> None:
        self.scheme, self.category, self.split, self.size = source.scheme, source.category, source.split, source.size
        self._all = source.all()

    def __len__(self) -> int:
        return len(self._all)

    def batch(self, indices):
        return self._all[list(indices)]


def bench_toy(size: int, per_category: int) -> dict:
    out = {}
    for cat, info in CATEGORIES.items():
        labels = ["good", *info["defects"]]
        render_sample(cat, "test", 0, size=size)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(per_category):
            render_sample(cat, "test", i, size=size, label=labels[i % len(labels)])
        wall = (time.perf_counter() - t0) / per_category
        cpu = (time.process_time() - c0) / per_category
        out[cat] = {"cpu_ms_per_image": round(cpu * 1000, 2), "images_per_cpu_second": round(1 / cpu, 1),
                    "wall_ms_per_image": round(wall * 1000, 2)}
        print(f"toy {cat:>10} {size}px: {cpu * 1000:6.1f} ms CPU/img ({1 / cpu:6.1f} img/s); wall {wall * 1000:6.1f} ms")
    return out


def bench_writer(size: int, n: int, batch_size: int) -> dict:
    out = {}
    gens = {"identity, prerendered source (writer alone)": (_Identity(), True),
            "identity, toy source rendered on the fly": (_Identity(), False)}
    try:
        import anoplug

        gens["draem, toy source rendered on the fly"] = (anoplug.get_generator("draem"), False)
    except Exception as e:  # the plugin may not be installed
        print(f"draem not available: {e}")
    for label, (gen, prerender) in gens.items():
        tmp = Path(tempfile.mkdtemp(prefix="anoplug-bench-"))
        try:
            src = ToyDataset("metal", size=size)
            src = _Prerendered(src) if prerender else src
            t0, c0 = time.perf_counter(), time.process_time()
            s = write_generated(gen, src, tmp, n=n, seed=0, batch_size=batch_size, n_train=0, progress=False)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            t1 = time.perf_counter()
            again = write_generated(gen, src, tmp, n=n, seed=0, batch_size=batch_size, n_train=0, progress=False)
            rerun = time.perf_counter() - t1
            assert s.written == n and again.written == 0
            out[label] = {"n": n, "size": size, "batch_size": batch_size, "wall_seconds": round(dt, 2),
                          "cpu_seconds": round(cpu, 2), "images_per_cpu_second": round(n / cpu, 1),
                          "images_per_wall_second": round(n / dt, 1), "rerun_seconds_nothing_to_do": round(rerun, 3)}
            print(f"writer [{label}] {n} x {size}px: {n / cpu:6.1f} img/CPU-s, {n / dt:6.1f} img/wall-s; re-run {rerun:.2f} s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--per-category", type=int, default=20)
    ap.add_argument("--writer-n", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {
        "benchmark": "data", "threads": 1, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "toy": bench_toy(args.size, args.per_category),
        "writer": bench_writer(args.size, args.writer_n, 16),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
