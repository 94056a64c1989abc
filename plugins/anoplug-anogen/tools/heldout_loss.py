"""Did the inversion learn? The masked ε-loss of each shipped vector against its init word, on fixed draws.

A training step's loss is dominated by its random timestep and noise (the curves in
``docs/loss_curve.png`` are flat at this scale), so this compares the two vectors on the *same*
draws: for each (category, type), the k = 3 shots of the fit, ``--repeats`` batches of
(shots, flips, t, ε, template) from one seeded generator, the masked loss with the learned vector
and with the init word's embedding ("defect"). Lower = the vector explains the defect pixels better.

    OMP_NUM_THREADS=1 python tools/heldout_loss.py --out docs/heldout_loss.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from anoplug_anogen.anogen import AnoGen

    from anoplug.data.toy import ToyDataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/heldout_loss.json"))
    ap.add_argument("--repeats", type=int, default=16)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()
    torch.set_num_threads(1)
    report = {"repeats": args.repeats, "seed": args.seed, "losses": {}}
    for cat in AnoGen.pretrained:
        shipped = AnoGen.from_pretrained(cat)
        learned = shipped.vectors.stacked().detach().clone()
        b = ToyDataset(cat, split="test", size=64, length=48).batch(range(48))  # the pool train_shipped.py used
        probe = AnoGen(**shipped.params.model_dump())
        data = probe.build(None, b[[i for i, lab in enumerate(b.label) if lab != "good"]], torch.Generator())
        probe.planned_steps(1, data)
        word = probe.vectors.stacked().detach()[0].clone()  # every row starts at the init word
        for k, t in enumerate(probe.types):
            row = {}
            for name, vec in (("learned", learned[shipped.types.index(t)]), ("init_word", word)):
                with torch.no_grad():
                    probe.vectors.rows[k].copy_(vec)
                g = torch.Generator().manual_seed(args.seed)
                with torch.no_grad():
                    vals = [float(probe.training_step(data, k * data["per_type"], g)["loss"]) for _ in range(args.repeats)]
                row[name] = round(sum(vals) / len(vals), 6)
            row["relative_change"] = round(row["learned"] / row["init_word"] - 1, 4)
            report["losses"][f"{cat}/{t}"] = row
            print(cat, t, row, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
