"""The loss history of a run as CSV, and a plot notebooks show next to the model.

A history is what :meth:`anoplug.train.Trainer.fit` returns: one dict per optimiser update
(``loss`` and whatever else the step logged, e.g. ``phase`` or ``d_loss``/``g_loss``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_history", "read_history", "smooth", "plot_history", "print_every"]


def print_every(n: int = 50, *, file: Any = None) -> Any:
    """A ``progress=`` callback for :meth:`anoplug.train.Trainer.fit` that prints one line every ``n``
    steps and at the last: ``step 50/600  12.3 s  loss=0.412  d_loss=...`` (seconds since the previous
    line; the numbers of that step's row). Training scripts log this way so that a run's log is readable
    after the fact, which a progress bar is not."""
    import sys
    import time

    last = [time.perf_counter()]

    def progress(step: int, total: int, row: dict) -> None:
        if step % n == 0 or step == total:
            now = time.perf_counter()
            numbers = "  ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float))
            print(f"step {step}/{total}  {now - last[0]:.1f} s  {numbers}", file=file or sys.stdout, flush=True)
            last[0] = now

    return progress


def write_history(history: Sequence[dict], path: str | Path) -> Path:
    """One row per update, columns ``step`` plus every key any row has (empty where a row lacks it)."""
    keys = sorted({k for row in history for k in row})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *keys])
        for i, row in enumerate(history, 1):
            w.writerow([i, *(("" if row.get(k) is None else repr(row[k]) if isinstance(row.get(k), float) else row[k])
                             for k in keys)])
    return path


def read_history(path: str | Path) -> list[dict]:
    """Inverse of :func:`write_history` (numbers come back as int/float, floats bit-exact via ``repr``)."""
    out = []
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            row.pop("step", None)
            out.append({k: _number(v) for k, v in row.items() if v != ""})
    return out


def _number(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            continue
    return v


def smooth(values: Sequence[float], window: int = 10) -> list[float]:
    """Trailing moving average (what a loss plot needs to be readable at batch size 4)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_history(history: Sequence[dict], keys: Sequence[str] = ("loss",), *, window: int = 10, ax: Any = None,
                 log_y: bool = False) -> Any:
    """Plot the chosen numbers against the update index (raw and smoothed); returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    for k in keys:
        pts = [(i, float(r[k])) for i, r in enumerate(history, 1) if isinstance(r.get(k), (int, float))
               and math.isfinite(float(r[k]))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        line, = ax.plot(xs, ys, alpha=0.3, linewidth=0.8)
        ax.plot(xs, smooth(list(ys), window), color=line.get_color(), label=k)
    ax.set_xlabel("update")
    if log_y:
        ax.set_yscale("log")
    ax.legend()
    return ax
