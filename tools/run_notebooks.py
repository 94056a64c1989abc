"""Run every notebook with papermill and record runtime and peak memory per notebook in a CSV.

    python tools/run_notebooks.py                 # smoke mode (ANOPLUG_SMOKE=1), all notebooks
    python tools/run_notebooks.py --full 02_1     # full parameters, notebooks whose name contains 02_1
    python tools/run_notebooks.py -p SIZE=96      # override a parameters-cell value

Each notebook runs in its own child process (after the BoTorch tutorials runner), so the
child's ``RUSAGE_CHILDREN`` peak RSS is exactly the peak of that notebook's kernel. The
executed notebooks go to ``out/notebooks/`` (ignored); the CSV to
``benchmarks/results/notebooks.csv``. Exit status 1 when a notebook fails or, in smoke
mode, exceeds its budget (60 s by default).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FIELDS = ["notebook", "mode", "status", "seconds", "kernel_peak_rss_mb", "budget_s", "error"]


def run_one(notebook: Path, output: Path, parameters: dict, timeout: int) -> dict:
    """In this (child) process: execute one notebook and report its kernel's peak memory."""
    import papermill as pm

    t0 = time.perf_counter()
    status, error = "ok", ""
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                            cwd=str(notebook.parent), execution_timeout=timeout, progress_bar=False, log_output=False)
    except Exception as e:  # papermill raises PapermillExecutionError with the failing cell
        status, error = "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the kernel is our waited-for child
    return {"status": status, "seconds": round(seconds, 2), "kernel_peak_rss_mb": round(peak_kb / 1024, 1), "error": error}


def parse_params(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep:
            raise SystemExit(f"-p expects NAME=VALUE, got {p!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("select", nargs="*", help="substrings of notebook names to run (default: all)")
    ap.add_argument("--full", action="store_true", help="full parameters instead of smoke mode")
    ap.add_argument("-p", "--param", action="append", default=[], help="NAME=VALUE passed to the parameters cell")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds allowed per notebook in smoke mode")
    ap.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    ap.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "notebooks.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "notebooks")
    ap.add_argument("--one", nargs=2, metavar=("NOTEBOOK", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    params = parse_params(args.param)

    if args.one:  # child mode
        print(json.dumps(run_one(Path(args.one[0]), Path(args.one[1]), params, args.timeout)))
        return 0

    notebooks = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if not args.select or any(s in p.name for s in args.select))
    if not notebooks:
        print(f"no notebook in {NOTEBOOKS} matches {args.select}", file=sys.stderr)
        return 1
    mode = "full" if args.full else "smoke"
    env = {**os.environ, "ANOPLUG_SMOKE": "0" if args.full else "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    args.out.mkdir(parents=True, exist_ok=True)
    rows, bad = [], 0
    for nb in notebooks:
        cmd = [sys.executable, __file__, "--one", str(nb), str(args.out / nb.name), "--timeout", str(args.timeout)]
        cmd += [x for p in args.param for x in ("-p", p)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            res = {"status": "failed", "seconds": "", "kernel_peak_rss_mb": "", "error": (r.stderr or r.stdout)[-300:]}
        budget = args.budget if not args.full else ""
        if res["status"] == "ok" and budget and float(res["seconds"]) > budget:
            res["status"] = "over budget"
        bad += res["status"] != "ok"
        row = {"notebook": nb.stem, "mode": mode, "budget_s": budget, **res}
        rows.append(row)
        print(f"{nb.stem:28s} {row['status']:12s} {row['seconds']:>7} s  peak {row['kernel_peak_rss_mb']:>7} MB  {row['error']}",
              flush=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.csv.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(args.csv)
    print(f"wrote {args.csv}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
