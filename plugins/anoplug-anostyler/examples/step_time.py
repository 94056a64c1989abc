"""CPU seconds per Adam step, 1 thread: paper preset (512², 64 crops of 128²) and cpu preset (256², 64²).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python plugins/anoplug-anostyler/examples/step_time.py

Four steps of one toy nut per preset (tiny CLIP, VGG16); ``time.process_time`` so that a
shared machine's load does not inflate it. Writes ``docs/step_time.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main(steps: int = 4) -> None:
    from anoplug_anostyler.method import Anostyler

    from anoplug.data.toy import ToyDataset

    torch.set_num_threads(1)
    res = {}
    for preset, size in (("paper", 512), ("cpu", 256)):
        b = ToyDataset("nut", split="train", size=size).batch([0]).with_conditions(prompt=["scratch"])
        g = Anostyler(preset=preset, steps=steps)
        g.clip, g.vgg, g.text_embeddings("nut", "scratch")  # noqa: B018 - load before timing
        c = time.process_time()
        g.generate(b, seeds=[0])
        per_step = (time.process_time() - c) / steps
        res[preset] = {"cpu_s_per_step": round(per_step, 3), "cpu_s_per_image_76_steps": round(76 * per_step, 1)}
        print(preset, res[preset], flush=True)
    DOCS.mkdir(exist_ok=True)
    (DOCS / "step_time.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
