"""The main job's throughput and memory (issue 14): ``anoplug generate`` end to end, next to its parts.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_driver.py`` (writes
``benchmarks/results/driver.json`` and ``driver.md``). Everything in one run:

- **parts**, per core (this process, one torch thread) at 256²: decoding (rendering) a toy
  source image, the generator in memory on decoded inputs, and the encode floor (``uint8``,
  PNG image, PNG mask, draws side file: what the driver does per sample after generating);
- **end to end**: ``anoplug generate METHOD --data toy:metal -n N --size 256 --workers W -q`` in a
  subprocess for DRAEM, CutPaste and NSA with W = 1 and 2: wall time with start-up, the
  command's own summary (seconds, images/s) and the CPU time of its process tree;
- **Dask**: a ``LocalCluster`` of 1 and 2 workers (started and warmed up first; its start-up is
  reported apart), DRAEM at 256²;
- **memory**: peak RSS of ``anoplug generate draem --size 64 -n N --workers 1`` for N = 1k, 10k, 100k.

The machine may be shared: the 1-minute load average is recorded before and after every
number, and CPU time beside wall time (waiting for a core shows in wall time only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "driver.json"
ANOPLUG = Path(sys.executable).with_name("anoplug")
PARAMS = {"draem": {"probability": 1.0}, "cutpaste": {}, "nsa": {}}
_SUMMARY = re.compile(r"wrote (\d+) new samples \((\d+) already present\) to .* in ([\d.]+) s \(([\d.]+) images/s")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def _spin(seconds: float, q) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        pass
    q.put(time.process_time() - c0)


def capacity(seconds: float = 3.0) -> float:
    """Cores two busy-loop processes obtain right now (2.0 on an idle 2-core machine): what is free to us."""
    import multiprocessing as mp

    q = mp.Queue()
    procs = [mp.Process(target=_spin, args=(seconds, q)) for _ in range(2)]
    for pr in procs:
        pr.start()
    got = sum(q.get() for _ in procs)
    for pr in procs:
        pr.join()
    return round(got / seconds, 2)


def _generator(name: str):
    import anoplug

    return anoplug.get_generator(name, **PARAMS[name])


# -- parts ----------------------------------------------------------------------------------------------------------
def bench_parts(method: str, size: int, n: int) -> dict:
    """Per-core rates of decode, generate and encode, with the driver's own code (one torch thread)."""
    from anoplug.data.toy import ToyDataset
    from anoplug.driver import Plan, Shard
    from anoplug.driver.work import _Worker

    torch.set_num_threads(1)
    src = ToyDataset("metal", size=size)
    load0 = load()
    c0 = time.process_time()
    for s in range(0, 32, 16):
        src.batch(range(s, s + 16))
    decode = 32 / (time.process_time() - c0)
    worker = _Worker(Plan(_generator(method), src, seed=0, encode=True))
    shards = [Shard(list(range(s, s + 16))) for s in range(0, n, 16)]
    inputs = [worker.inputs(sh) for sh in shards[:4]]  # decoded once, reused: the generator alone is timed
    worker.finish(shards[0], inputs[0], worker.generate(shards[0], inputs[0]))  # warm-up
    gen_cpu = gen_wall = enc_cpu = 0.0
    for k, sh in enumerate(shards):
        inp = inputs[k % len(inputs)]
        sh = Shard(sh.indices)
        t, c = time.perf_counter(), time.process_time()
        out = worker.generate(sh, inp)
        gen_wall += time.perf_counter() - t
        gen_cpu += time.process_time() - c
        c = time.process_time()
        worker.finish(sh, inp, out)
        enc_cpu += time.process_time() - c
    m = len(shards) * 16
    out = {"decode_images_per_cpu_s": round(decode, 1), "generator_images_per_cpu_s": round(m / gen_cpu, 1),
           "generator_images_per_wall_s": round(m / gen_wall, 1), "encode_images_per_cpu_s": round(m / enc_cpu, 1),
           "samples": m, "load_before": load0, "load_after": load()}
    print(f"parts {method:>8} {size}px: decode {decode:6.1f}/s, generator {m / gen_cpu:6.1f}/s, "
          f"encode {m / enc_cpu:6.1f}/s per CPU-second (load {load0} -> {out['load_after']})", flush=True)
    return out


# -- end to end -------------------------------------------------------------------------------------------------------
def _popen_usage(argv: list[str]) -> dict:
    """One ``anoplug`` command in a subprocess, reaped with ``wait4``: wall time, its summary line, and the CPU
    time and peak RSS (largest process) of its tree."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    load0 = load()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen([str(ANOPLUG), *argv], env=env, stdout=fo, stderr=fe, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if proc.returncode != 0:
        raise RuntimeError(f"anoplug {' '.join(argv)} failed ({proc.returncode}): {err[-2000:]}")
    res = {"wall_seconds_with_startup": round(wall, 2), "load_before": load0, "load_after": load(),
           "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    m = _SUMMARY.search(out)
    if m:
        res.update(written=int(m.group(1)), seconds=float(m.group(3)), images_per_s=float(m.group(4)))
    return res


def _generate(method: str, size: int, n: int, workers: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="anoplug-e2e-"))
    try:
        extra = [a for k, v in PARAMS[method].items() for a in ("-p", f"{k}={v}")]
        batch = ["--batch-size", "8"] if n <= 16 else []  # the small run still forks every worker
        return _popen_usage(["generate", method, "--data", "toy:metal", "-n", str(n), "--size", str(size),
                             "--workers", str(workers), "--out", str(tmp), "-q", *batch, *extra])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_e2e(method: str, size: int, n: int, workers: int, repeats: int) -> dict:
    free = capacity()
    best = None
    for _ in range(repeats):
        r = _generate(method, size, n, workers)
        if best is None or r["images_per_s"] > best["images_per_s"]:
            best = r
    best["repeats"] = repeats
    best["two_spinners_obtained_before"] = free
    # fixed costs (start-up, forking, the 64 normals copied to train/good): a run of 16 samples
    fixed = _generate(method, size, 16, workers)
    best["fixed_run_n16"] = fixed
    best["cores_obtained"] = round(best["cpu_seconds"] / best["wall_seconds_with_startup"], 2)
    best["steady_cpu_ms_per_image"] = round(1000 * (best["cpu_seconds"] - fixed["cpu_seconds"]) / (n - 16), 2)
    print(f"e2e   {method:>8} {size}px n={n} workers={workers}: {best['images_per_s']:6.1f} img/s "
          f"({best['seconds']:.1f} s; {best['wall_seconds_with_startup']:.1f} s with start-up; "
          f"{best['steady_cpu_ms_per_image']:.1f} ms CPU/img steady; {best['cores_obtained']} cores obtained; "
          f"2 spinners got {free} cores just before) "
          f"load {best['load_before']} -> {best['load_after']}", flush=True)
    return best


# -- scaling, paired -----------------------------------------------------------------------------------------------------
def bench_scaling(method: str, size: int, n: int, rounds: int) -> dict:
    """The writer's own rate (no start-up, no normals) for one process (one thread; pipelined) and 2 local workers,
    interleaved round by round, each run after a probe of the free cores: a fair 2-vs-1 on a shared machine."""
    from anoplug.data.toy import ToyDataset
    from anoplug.data.writer import write_generated
    from anoplug.driver import InProcess, LocalProcesses

    gen, src = _generator(method), ToyDataset("metal", size=size)
    write_generated(gen, src, tempfile.mkdtemp(prefix="anoplug-warm-"), n=16, n_train=0, progress=False)
    kinds = {"1 process, 1 thread": lambda: InProcess(pipeline=False), "1 process, pipelined": InProcess,
             "2 local workers": lambda: LocalProcesses(2)}
    runs: dict[str, list] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k, make in kinds.items():
            free = capacity()
            tmp = Path(tempfile.mkdtemp(prefix="anoplug-scale-"))
            try:
                s = write_generated(gen, src, tmp, n=n, n_train=0, progress=False, executor=make())
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            runs[k].append({"images_per_s": round(s.rate, 1), "free_before": free, "load": load()})
            print(f"scale {method} {k:>22}: {s.rate:6.1f} img/s (free {free})", flush=True)
    best = {k: max(v, key=lambda r: r["images_per_s"]) for k, v in runs.items()}
    return {"method": method, "n": n, "rounds": runs, "best": best}


# -- Dask ---------------------------------------------------------------------------------------------------------------
def bench_dask(size: int, n: int, workers: int) -> dict:
    from distributed import LocalCluster

    from anoplug.data.toy import ToyDataset
    from anoplug.data.writer import write_generated
    from anoplug.driver import DaskExecutor

    gen, src = _generator("draem"), ToyDataset("metal", size=size)
    free = capacity()
    tmp = Path(tempfile.mkdtemp(prefix="anoplug-dask-"))
    load0 = load()
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
                           silence_logs=logging.ERROR, env={"OMP_NUM_THREADS": "1"})
    try:
        start = time.perf_counter() - t0
        ex = DaskExecutor(cluster.scheduler_address)
        t1 = time.perf_counter()
        write_generated(gen, src, tmp / "warm", n=16 * workers, n_train=0, progress=False, executor=ex)
        warm = time.perf_counter() - t1
        load1 = load()
        from distributed import Client

        with Client(cluster.scheduler_address, set_as_default=False) as c:
            w0, c0 = sum(c.run(time.process_time).values()), time.process_time()
            s = write_generated(gen, src, tmp / "run", n=n, n_train=0, progress=False, executor=ex)
            worker_cpu, client_cpu = sum(c.run(time.process_time).values()) - w0, time.process_time() - c0
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"workers": workers, "n": n, "cluster_start_seconds": round(start, 2), "warm_up_seconds": round(warm, 2),
           "seconds": round(s.seconds, 2), "images_per_s": round(s.rate, 1), "load_before": load0,
           "load_at_timed_run": load1, "load_after": load(),
           "worker_cpu_ms_per_image": round(1000 * worker_cpu / n, 2),
           "client_and_scheduler_cpu_ms_per_image": round(1000 * client_cpu / n, 2),
           "cores_obtained": round((worker_cpu + client_cpu) / s.seconds, 2), "two_spinners_obtained_before": free}
    print(f"dask  draem {size}px n={n} workers={workers}: {s.rate:6.1f} img/s (cluster start {start:.1f} s, "
          f"warm-up {warm:.1f} s; CPU/img: workers {res['worker_cpu_ms_per_image']} ms, client+scheduler "
          f"{res['client_and_scheduler_cpu_ms_per_image']} ms; {res['cores_obtained']} cores obtained) "
          f"load {load1} -> {res['load_after']}", flush=True)
    return res


# -- memory ----------------------------------------------------------------------------------------------------------
def bench_memory(n: int, size: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="anoplug-mem-"))
    try:
        r = _popen_usage(["generate", "draem", "--data", "toy:metal", "-n", str(n), "--size", str(size),
                          "--workers", "1", "--out", str(tmp), "-q"])
        r["disk_mb"] = round(sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 2**20, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r["n"] = n
    print(f"mem   draem {size}px n={n}: peak RSS {r['peak_rss_mb']} MB, {r['images_per_s']} img/s, "
          f"{r['disk_mb']} MB on disk, load {r['load_before']} -> {r['load_after']}", flush=True)
    return r


# -- report -----------------------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    lines = ["# The generation driver: throughput and memory", "",
             f"{res['machine']['cpus']} CPUs ({res['machine']['machine']}), torch {res['machine']['torch']}, one torch "
             f"thread per process; a shared machine: the 1-minute load average is given before → after each number. "
             f"`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_driver.py`, {res['date']}.", ""]
    parts, e2e = res.get("parts", {}), res.get("e2e", {})
    if parts:
        lines += [f"## End to end vs the parts, {res['size']}² (`anoplug generate -n {res['n']}`, toy:metal)", "",
                  "Parts: images per CPU-second in one process with the driver's own code (decode = rendering a toy "
                  "normal, which each worker does once per normal; encode = uint8 + PNG image + PNG mask + draws). "
                  "End to end: the command's own summary (it includes copying 64 normals to train/good and forking "
                  "the workers), best of the repeats; *with start-up* adds importing torch and the plugins. "
                  "*Cores obtained* = CPU time of the command's process tree / its wall time: what the shared machine "
                  "gave it. *Steady CPU ms/img* = (CPU of the run − CPU of a 16-sample run) / (n − 16): the cost per "
                  "image without the fixed costs, which bounds images/s per core at 1000 / it.", "",
                  "*Free* = cores two busy-loop processes obtained in 3 s just before (2.0 = an idle machine).", "",
                  "| method | generator /CPU-s | encode /CPU-s | workers | end to end img/s | with start-up | free | "
                  "cores obtained | steady CPU ms/img | steady img/CPU-s (per core) | per core / min(gen, enc) | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, p in parts.items():
            floor = min(p["generator_images_per_cpu_s"], p["encode_images_per_cpu_s"])
            for w, r in sorted(e2e.get(m, {}).items()):
                steady = r.get("steady_cpu_ms_per_image")
                per_core = 1000 / steady if steady else float("nan")
                lines.append(f"| {m} | {p['generator_images_per_cpu_s']} | {p['encode_images_per_cpu_s']} | {w} | "
                             f"{r['images_per_s']} | {res['n'] / r['wall_seconds_with_startup']:.1f} | "
                             f"{r.get('two_spinners_obtained_before', '')} | {r.get('cores_obtained', '')} | "
                             f"{steady} | {per_core:.1f} | {per_core / floor:.0%} | "
                             f"{r['load_before']} → {r['load_after']} |")
        lines += ["", "Decode per CPU-second: " + ", ".join(f"{m} {p['decode_images_per_cpu_s']}" for m, p in parts.items())
                  + " (the same toy renders; once per normal per worker).", ""]
        if "draem" in e2e and {"1", "2"} <= set(e2e["draem"]):
            d1, d2 = e2e["draem"]["1"], e2e["draem"]["2"]
            sp = d2["images_per_s"] / d1["images_per_s"]
            lines += [f"DRAEM end to end, 2 local workers vs 1 (pipelined) process: {sp:.2f}× wall, with "
                      f"{d1.get('cores_obtained')} vs {d2.get('cores_obtained')} cores obtained; the paired comparison "
                      "below isolates the executor (target ≥ 1.7×).", ""]
    if res.get("scaling"):
        sc = res["scaling"]
        lines += [f"## 2 local workers vs 1, paired ({sc['method']} {res['size']}², -n {sc['n']}, the writer's own rate)", "",
                  "No start-up and no normals to copy; the three kinds alternate, round by round, each run after a "
                  "probe of the free cores (*free*, as above). Best run of each kind, then every run.", "",
                  "| executor | best img/s | free before it | every run (img/s @ free) |", "|---|---|---|---|"]
        for k, r in sc["best"].items():
            every = ", ".join(f"{x['images_per_s']} @ {x['free_before']}" for x in sc["rounds"][k])
            lines.append(f"| {k} | {r['images_per_s']} | {r['free_before']} | {every} |")
        b = {k: r["images_per_s"] for k, r in sc["best"].items()}
        two, one, piped = b["2 local workers"], b["1 process, 1 thread"], b["1 process, pipelined"]
        lines += ["", f"2 local workers vs one process with one thread: **{two / one:.2f}×**; "
                  f"vs one pipelined process: {two / piped:.2f}×.", ""]
    if res.get("dask"):
        lines += [f"## Dask LocalCluster, DRAEM {res['size']}², -n {res['dask'][0]['n']}", "",
                  "| workers | img/s (timed run) | cluster start s | warm-up s (imports, plan) | worker CPU ms/img | "
                  "client+scheduler CPU ms/img | free | cores obtained | load |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["dask"]:
            lines.append(f"| {r['workers']} | {r['images_per_s']} | {r['cluster_start_seconds']} | {r['warm_up_seconds']} | "
                         f"{r.get('worker_cpu_ms_per_image', '')} | {r.get('client_and_scheduler_cpu_ms_per_image', '')} | "
                         f"{r.get('two_spinners_obtained_before', '')} | {r.get('cores_obtained', '')} | "
                         f"{r['load_at_timed_run']} → {r['load_after']} |")
        if len(res["dask"]) == 2:
            lines += ["", f"2 workers vs 1: {res['dask'][1]['images_per_s'] / res['dask'][0]['images_per_s']:.2f}×."]
        lines.append("")
    if res.get("memory"):
        lines += [f"## Peak memory, `anoplug generate draem --size {res['memory'][0].get('size', 64)} --workers 1`", "",
                  "| -n | peak RSS MB | img/s | wall s | on disk MB | load |", "|---|---|---|---|---|---|"]
        for r in res["memory"]:
            lines.append(f"| {r['n']} | {r['peak_rss_mb']} | {r.get('images_per_s')} | {r['wall_seconds_with_startup']} | "
                         f"{r['disk_mb']} | {r['load_before']} → {r['load_after']} |")
        first, last = res["memory"][0], res["memory"][-1]
        lines += ["", f"Peak at -n {last['n']} vs -n {first['n']}: {last['peak_rss_mb'] / first['peak_rss_mb'] - 1:+.1%} "
                  "(target: within 10 %).", ""]
    if res.get("notes"):
        lines += ["## Notes", "", *res["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="parts,e2e,scaling,dask,memory")
    ap.add_argument("--methods", default="draem,cutpaste,nsa")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("-n", type=int, default=480, help="samples per end-to-end and Dask run")
    ap.add_argument("--repeats", type=int, default=2, help="end-to-end runs per setting (the best is kept)")
    ap.add_argument("--scaling-n", type=int, default=1920, help="samples per run of the paired 2-vs-1 comparison")
    ap.add_argument("--memory-n", default="1000,10000,100000")
    ap.add_argument("--memory-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    methods = args.methods.split(",")
    res: dict = {"benchmark": "driver", "date": time.strftime("%Y-%m-%d"), "size": args.size, "n": args.n,
                 "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                             "torch": torch.__version__}}
    if args.out.is_file():  # keep the sections not re-run
        old = json.loads(args.out.read_text())
        res.update({k: v for k, v in old.items() if k in ("parts", "e2e", "scaling", "dask", "memory", "notes")})
    if "parts" in sections:
        res["parts"] = {m: bench_parts(m, args.size, 160) for m in methods}
    if "e2e" in sections:
        res["e2e"] = {m: {str(w): bench_e2e(m, args.size, args.n, w, args.repeats) for w in (1, 2)} for m in methods}
    if "scaling" in sections:
        res["scaling"] = bench_scaling("draem", args.size, args.scaling_n, 3)
    if "dask" in sections:
        res["dask"] = [bench_dask(args.size, args.n, w) for w in (1, 2)]
    if "memory" in sections:
        res["memory"] = [dict(bench_memory(int(k), args.memory_size), size=args.memory_size)
                         for k in args.memory_n.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(res))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
