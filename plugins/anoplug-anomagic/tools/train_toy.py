"""Train the shipped checkpoint: Anomagic on the toy defects of every category but the held-out one.

    OMP_NUM_THREADS=1 nice -n 10 python plugins/anoplug-anomagic/tools/train_toy.py --steps 600

Seed 0; the corpus is the toy test split (first 24 items per category, defects only), the
held-out category ("nut") and "tray" (logical defects) excluded — zero-shot on "nut".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from anoplug_anomagic.method import PRESETS, Anomagic
from anoplug_anomagic.retrieval import _concat

from anoplug.data.toy import CATEGORIES, render

OUT = Path(__file__).resolve().parents[1] / "src" / "anoplug_anomagic" / "weights" / "toy-holdout-nut"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--holdout", default="nut")
    ap.add_argument("--length", type=int, default=24)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    cats = [c for c in CATEGORIES if c not in (a.holdout, "tray")]
    anomalies = _concat([render(c, "test", i, 0, 64) for c in cats for i in range(a.length)])
    params = {**PRESETS["cpu"], "fit_steps": a.steps, "holdout": [a.holdout], "corpus": "toy",
              "toy_corpus_length": a.length, "seed": 0}
    g = Anomagic(**params)
    t = time.time()
    g.fit(None, anomalies, progress=lambda s, n, row: print(s, n, row) if s % 50 == 0 else None)
    wall = time.time() - t
    g.save(a.out)
    log = {"command": f"train_toy.py --steps {a.steps} --holdout {a.holdout} --length {a.length}", "seed": 0,
           "wall_s": round(wall, 1), "params": params, "loss": [h["loss"] for h in g.history],
           "trained_categories": sorted(set(g.trained_categories))}
    (a.out / "train_log.json").write_text(json.dumps(log, indent=1))
    print("wall", wall)


if __name__ == "__main__":
    main()
